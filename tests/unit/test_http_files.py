"""The file routes over a real hypercorn listener with a fake kernel and a fake file port:
the raw upload body (backpressure, draining, disconnects), downloads, errors, and what a
destroy does to a transfer in flight."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from garden.errors import ConflictError
from tests.unit.fake_files import FakeFiles
from tests.unit.fakes import serve_fakes

CHUNK = 64 << 10


@pytest.fixture
def fake_files() -> FakeFiles:
    return FakeFiles()


@pytest.fixture
async def client(
    tmp_path: Path, nursery: trio.Nursery, fake_files: FakeFiles
) -> AsyncIterator[httpx.AsyncClient]:
    url = await serve_fakes(nursery, tmp_path, files=fake_files)
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        assert (await c.post("/containers", json={"handle": "c"})).status_code == 200
        yield c
    nursery.cancel_scope.cancel()


async def test_upload_arrives_whole(client: httpx.AsyncClient, fake_files: FakeFiles) -> None:
    data = bytes(range(256)) * 10_000
    r = await client.put("/containers/c/files?destination=/a/b&user=vcap", content=data)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert fake_files.written["/a/b"] == data
    assert fake_files.calls == [("c", "/a/b", "vcap", False)]
    r = await client.put(
        "/containers/c/files?destination=/d",
        content=b"",
        headers={"Content-Type": "application/x-tar; charset=binary"},
    )
    assert r.status_code == 200
    assert fake_files.calls[-1] == ("c", "/d", "", True)


async def test_upload_applies_backpressure(
    client: httpx.AsyncClient, fake_files: FakeFiles
) -> None:
    total = 800  # 50 MiB: far more than socket buffers and hypercorn's queue hold (~1 MiB here)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(total):
            sent += 1
            yield b"x" * CHUNK

    fake_files.pause_after_first_chunk = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(client.put, "/containers/c/files?destination=/f", content=body())
        )
        await fake_files.first_chunk_read.wait()
        await trio.testing.wait_all_tasks_blocked(cushion=0.2)
        stuck_at = sent
        assert stuck_at < total // 8, "the server read the body without its reader asking"
        fake_files.pause_after_first_chunk.set()
    assert len(fake_files.written["/f"]) == total * CHUNK


async def test_an_early_error_is_answered_after_draining_the_body(
    client: httpx.AsyncClient, fake_files: FakeFiles
) -> None:
    fake_files.fail_in = ConflictError("/f is a directory")
    r = await client.put("/containers/c/files?destination=/f", content=b"y" * (32 << 20))
    assert r.status_code == 409
    assert r.json()["type"] == "ConflictError"
    r = await client.put("/containers/nope/files?destination=/f", content=b"y" * (8 << 20))
    assert r.status_code == 404
    assert r.json()["type"] == "ContainerNotFoundError"
    assert (await client.get("/ping")).status_code == 200  # the connection is still good


async def test_missing_parameters(client: httpx.AsyncClient) -> None:
    r = await client.put("/containers/c/files", content=b"x")
    assert r.status_code == 400
    assert "destination" in r.json()["message"]
    r = await client.get("/containers/c/files")
    assert r.status_code == 400
    assert "source" in r.json()["message"]


async def test_client_going_away_mid_upload(
    client: httpx.AsyncClient, fake_files: FakeFiles
) -> None:
    from garden.http.rawbody import ClientDisconnected

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * CHUNK
        await trio.sleep_forever()

    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(client.put, "/containers/c/files?destination=/f", content=body())
            )
            await fake_files.first_chunk_read.wait()
            nursery.cancel_scope.cancel()  # the client closes its connection
    with trio.fail_after(5):
        await fake_files.ended_badly.wait()
    assert isinstance(fake_files.ended, ClientDisconnected)
    assert "/f" not in fake_files.written


async def test_downloads(client: httpx.AsyncClient, fake_files: FakeFiles) -> None:
    fake_files.add_source("/f", "file", [b"abc", b"def"])
    fake_files.add_source("/d", "dir", [b"tar" * 1000])
    r = await client.get("/containers/c/files?source=/f")
    assert r.status_code == 200
    assert r.content == b"abcdef"
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Length"] == "6"
    r = await client.get("/containers/c/files?source=/d&user=vcap")
    assert r.headers["Content-Type"] == "application/x-tar"
    assert r.content == b"tar" * 1000
    r = await client.get("/containers/c/files?source=/missing")
    assert r.status_code == 404
    assert r.json()["type"] == "FileNotFoundError"
    assert all(s.closed for s in fake_files.opened)


async def test_a_download_that_fails_midway_is_never_complete(
    client: httpx.AsyncClient, fake_files: FakeFiles
) -> None:
    fake_files.add_source("/d", "dir", [b"a" * 1000, b"b" * 1000], fail_after=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/containers/c/files?source=/d")
    fake_files.add_source("/f", "file", [b"a" * 1000, b"b" * 1000], fail_after=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/containers/c/files?source=/f")


async def test_destroy_cancels_an_upload_in_flight(
    client: httpx.AsyncClient, fake_files: FakeFiles
) -> None:
    release = trio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * CHUNK
        await release.wait()
        yield b"rest"

    answer: list[httpx.Response] = []

    async def upload() -> None:
        answer.append(await client.put("/containers/c/files?destination=/f", content=body()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload)
        await fake_files.first_chunk_read.wait()
        r = await client.delete("/containers/c")
        assert r.status_code == 200, r.text
        assert isinstance(fake_files.ended, trio.Cancelled)
        release.set()
    assert answer[0].status_code == 404
    assert "destroyed during the transfer" in answer[0].json()["message"]
    assert "/f" not in fake_files.written


async def test_destroy_cuts_a_download_off(
    client: httpx.AsyncClient, fake_files: FakeFiles
) -> None:
    fake_files.add_source("/d", "dir", [b"a" * 1000, b"b" * 1000])
    source = fake_files.sources["/d"]
    source.gate = trio.Event()
    errors: list[Exception] = []

    async def download() -> None:
        try:
            await client.get("/containers/c/files?source=/d")
        except httpx.HTTPError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(download)
        await source.first_sent.wait()
        r = await client.delete("/containers/c")
        assert r.status_code == 200, r.text
    assert len(errors) == 1 and isinstance(errors[0], httpx.RemoteProtocolError)
    assert source.closed
