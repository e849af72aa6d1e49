"""Both clients against FakeGarden for the routes other branches are still building: what
goes on the wire (method, path, query, content type, body, chunked streaming) and how the
answers are decoded."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
import trio

from garden import errors as e
from garden.api import (
    BandwidthLimits,
    ContainerMetrics,
    CpuLimits,
    DiskLimits,
    GraceTime,
    MemoryLimits,
    NetOutRule,
    PortMapping,
)
from garden.client import AsyncClient, Client
from tests.unit.client.both import open_client
from tests.unit.servers import Fake

KINDS = ["sync", "async"]


@pytest.mark.parametrize("kind", KINDS)
async def test_limits_are_typed_both_ways(fake: Fake, kind: str) -> None:
    async with open_client(kind, fake.url) as c:
        assert await c.get_limit("c", MemoryLimits) == MemoryLimits()
        got = await c.set_limit("c", MemoryLimits(limit_in_bytes=64 << 20))
        assert got == MemoryLimits(limit_in_bytes=64 << 20)
        assert await c.set_limit("c", CpuLimits(limit_in_shares=512)) == CpuLimits(
            limit_in_shares=512
        )
        disk = await c.set_limit("c", DiskLimits(byte_hard=1 << 30))
        assert disk.byte_hard == 1 << 30 and disk.block_hard is None
        bw = await c.set_limit("c", BandwidthLimits(rate=1000, burst=100))
        assert (bw.rate, bw.burst) == (1000, 100)
        with pytest.raises(TypeError, match="not a limit type"):
            await c.get_limit("c", GraceTime)
    put = [s for s in fake.app.seen if s.method == "PUT"]
    assert [s.path for s in put] == [
        "/containers/c/limits/memory",
        "/containers/c/limits/cpu",
        "/containers/c/limits/disk",
        "/containers/c/limits/bandwidth",
    ]
    assert put[0].headers["content-type"] == "application/json"
    assert json.loads(put[0].body) == {"limit_in_bytes": 64 << 20}


@pytest.mark.parametrize("kind", KINDS)
async def test_net_in_and_out(fake: Fake, kind: str) -> None:
    async with open_client(kind, fake.url) as c:
        assert await c.net_in("c", container_port=8080) == PortMapping(
            host_port=61001, container_port=8080
        )
        assert await c.net_in("c", 7000, 80) == PortMapping(host_port=7000, container_port=80)
        await c.net_out("c", NetOutRule(network="10.0.0.0/8", port=53, protocol="udp"))
        with pytest.raises(e.ContainerNotFoundError):
            await c.net_in("ghost")
    bodies = [s.body for s in fake.app.seen if s.path.startswith("/containers/c/net")]
    assert [json.loads(b) for b in bodies[:2]] == [
        {"host_port": 0, "container_port": 8080},
        {"host_port": 7000, "container_port": 80},
    ]
    rule = msgspec.json.decode(bodies[2], type=NetOutRule)
    assert rule == NetOutRule(network="10.0.0.0/8", port=53, protocol="udp")


@pytest.mark.parametrize("kind", KINDS)
async def test_bulk_info_metrics_and_server_metrics(fake: Fake, kind: str) -> None:
    async with open_client(kind, fake.url) as c:
        bulk = await c.bulk_info(["c", "ghost"])
        assert bulk["c"].info is not None and bulk["c"].info.container_ip == "10.254.0.1"
        assert bulk["c"].error is None
        assert bulk["ghost"].error is not None
        assert bulk["ghost"].error.type == "ContainerNotFoundError"
        m = await c.metrics("c")
        assert isinstance(m, ContainerMetrics) and m.memory_stat["usage_in_bytes"] == 4096
        assert "garden_containers 1" in await c.server_metrics()
    seen = next(s for s in fake.app.seen if s.path == "/containers/bulk_info")
    assert seen.query == [("handles", "c,ghost")]


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def test_sync_files_in_and_out(fake: Fake) -> None:
    def scenario() -> None:
        with Client(fake.url) as c:
            c.stream_in("c", "/tmp/a b.txt", b"bytes")
            c.stream_in("c", "/tmp/chunked", iter([b"one ", b"two ", b"three"]))
            c.stream_in("c", "/tmp/file", io.BytesIO(b"from a file"))
            c.stream_in("c", "/app", _tar({"x": b"1", "sub/y": b"2"}), tar=True)
            with c.stream_out("c", "/tmp/a b.txt") as d:
                assert not d.is_tar and d.read() == b"bytes"
            assert c.stream_out("c", "/tmp/chunked").read() == b"one two three"
            with c.stream_out("c", "/app") as d:
                assert d.is_tar
                with tarfile.open(fileobj=io.BytesIO(b"".join(d))) as tar:
                    assert sorted(tar.getnames()) == ["app/sub/y", "app/x"]
            with pytest.raises(e.FileNotFoundInContainerError):
                c.stream_out("c", "/nope")

    await trio.to_thread.run_sync(scenario)
    puts = [s for s in fake.app.seen if s.method == "PUT"]
    assert puts[0].query == [("destination", "/tmp/a b.txt")]
    assert puts[0].headers["content-type"] == "application/octet-stream"
    assert puts[0].headers["content-length"] == "5"
    assert puts[1].headers.get("transfer-encoding") == "chunked"
    assert puts[3].headers["content-type"] == "application/x-tar"
    assert fake.app.containers["c"].files["/app/sub/y"] == b"2"


async def test_async_files_in_and_out(fake: Fake) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"as", b"ync"):
            yield part

    async with AsyncClient(fake.url) as c:
        await c.stream_in("c", "/a", chunks())
        await c.stream_in("c", "/b", [b"sync ", b"iterable"])
        await c.stream_in("c", "/d", _tar({"f": b"tarred"}), tar=True)
        assert await (await c.stream_out("c", "/a")).read() == b"async"
        assert await (await c.stream_out("c", "/b")).read() == b"sync iterable"
        download = await c.stream_out("c", "/d")
        assert download.is_tar
        assert b"tarred" in await download.read()
    assert fake.app.containers["c"].files["/d/f"] == b"tarred"


async def test_stdin_streams_chunks_as_they_come(fake: Fake) -> None:
    sent = trio.Event()

    def produce() -> Iterator[bytes]:
        yield b"first "
        trio.from_thread.run_sync(sent.set)
        yield b"second"

    def scenario() -> None:
        with Client(fake.url) as c:
            c.stdin("c", "p1", produce())

    await trio.to_thread.run_sync(scenario)
    assert sent.is_set()
    async with AsyncClient(fake.url) as ac:
        await ac.stdin("c", "p2", b"whole")
    seen = [s for s in fake.app.seen if s.path.endswith("/stdin")]
    assert [s.path for s in seen] == [
        "/containers/c/processes/p1/stdin",
        "/containers/c/processes/p2/stdin",
    ]
    assert fake.app.containers["c"].stdin == {"p1": b"first second", "p2": b"whole"}
    assert seen[0].headers.get("transfer-encoding") == "chunked"
