"""Both clients against the real server (fake kernel, fake processes) over real sockets: every
route it serves, typed answers, typed errors, process streams, events, the terminal."""

from __future__ import annotations

import pytest
import trio

from garden import errors as e
from garden.api import (
    ContainerInfo,
    ContainerMetrics,
    ContainerSpec,
    MemoryLimits,
    NetOutRule,
    PidLimits,
    ProcessPayload,
    ProcessSpec,
    TtySize,
)
from garden.client import AsyncClient, Client, streams
from garden.client.terminal import TerminalClosed, TerminalExited, TerminalNotice, TerminalOutput
from garden.events.schema import ContainerCreated
from tests.unit.client.both import open_client
from tests.unit.servers import Real

KINDS = ["sync", "async"]


@pytest.fixture
def base64_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output of a base64 stream read with `outputs()`/`result()` must come through
    `base64_output` (decoded straight from the line), never the JSON decoder's `str`."""
    slow = streams.payload_bytes

    def only_text(payload: ProcessPayload, base64: bool) -> bytes:
        assert not base64, "a base64 output line went through the JSON decoder"
        return slow(payload, base64)

    monkeypatch.setattr(streams, "payload_bytes", only_text)


@pytest.mark.parametrize("kind", KINDS)
async def test_life_cycle_and_properties(real: Real, kind: str) -> None:
    async with open_client(kind, real.url) as c:
        assert await c.ping() is None
        cap = await c.capacity()
        assert cap.max_containers > 0 and cap.memory_in_bytes > 0
        handle = await c.create(ContainerSpec(handle="web", properties={"tier": "a"}))
        assert handle == "web"
        made = await c.create()
        assert made and made != "web"
        assert sorted(await c.handles()) == sorted(["web", made])
        assert await c.handles({"tier": "a"}) == ["web"]
        assert await c.handles({"tier": "b"}) == []
        info = await c.info("web")
        assert isinstance(info, ContainerInfo)
        assert info.state == "active" and info.properties == {"tier": "a"}
        await c.set_property("web", "owner name", "me & you")
        assert await c.get_property("web", "owner name") == "me & you"
        assert await c.properties("web") == {"tier": "a", "owner name": "me & you"}
        await c.delete_property("web", "owner name")
        with pytest.raises(e.PropertyNotFoundError):
            await c.get_property("web", "owner name")
        await c.set_grace_time("web", 90.5)
        assert (await c.info("web")).grace_time == 90.5
        await c.stop("web", kill=True)
        assert (await c.info("web")).state == "stopped"
        await c.destroy("web")
        await c.destroy(made)
        assert await c.handles() == []


@pytest.mark.parametrize("kind", KINDS)
async def test_errors_come_back_as_their_classes(real: Real, kind: str) -> None:
    async with open_client(kind, real.url) as c:
        with pytest.raises(e.ContainerNotFoundError) as info:
            await c.info("nope")
        assert info.value.handle == "nope"
        assert info.value.message == "unknown handle: nope"
        await c.create(ContainerSpec(handle="dup"))
        with pytest.raises(e.HandleInUseError, match="handle 'dup' already in use"):
            await c.create(ContainerSpec(handle="dup"))
        with pytest.raises(e.InvalidRequestError):
            await c.create(ContainerSpec(handle="bad handle!"))
        with pytest.raises(e.ExecutableNotFoundError):
            await c.run("dup", ProcessSpec(path="/missing"))
        await c.stop("dup")
        with pytest.raises(e.ContainerStoppedError):
            await c.run("dup", ProcessSpec(path="echo"))


@pytest.mark.parametrize("kind", KINDS)
async def test_unreachable_server(kind: str) -> None:
    async with open_client(kind, "http://127.0.0.1:9") as c:
        with pytest.raises(e.ServerUnreachableError):
            await c.ping()


@pytest.mark.usefixtures("base64_fast_path")
async def test_sync_run_streams_exact_bytes_and_exit_status(real: Real) -> None:
    def scenario() -> None:
        with Client(real.url) as c:
            c.create(ContainerSpec(handle="c"))
            stream = c.run("c", ProcessSpec(path="echo", args=["a", "b"], id="p1"), base64=True)
            assert stream.process_id == "p1"
            assert stream.exit_status is None
            trio.from_thread.run_sync(real.finish_all, 7)
            result = stream.result()
            assert (result.stdout, result.stderr, result.exit_status) == (b"a b", b"err\xc3\xa9", 7)
            # Text mode: the server joins the split UTF-8 character; attach replays everything.
            with c.attach("c", "p1") as again:
                payloads = list(again)
                assert [(p.source, p.data) for p in payloads] == [
                    ("stdout", "a b"),
                    ("stderr", "err"),
                    ("stderr", "é"),
                ]
                assert again.exit_status == 7
            # The connection went back to the pool and still works.
            c.ping()

    await trio.to_thread.run_sync(scenario)


async def test_sync_signal_ends_a_process(real: Real) -> None:
    def scenario() -> None:
        with Client(real.url) as c:
            c.create(ContainerSpec(handle="c"))
            stream = c.run("c", ProcessSpec(path="sleep", args=["9"]))
            c.clone().signal("c", stream.process_id, "TERM")
            assert stream.wait() == 128 + 15
            with pytest.raises(e.ProcessNotFoundError):
                c.signal("c", "no-such-process", 9)

    await trio.to_thread.run_sync(scenario)


@pytest.mark.usefixtures("base64_fast_path")
async def test_async_run_attach_and_signal(real: Real) -> None:
    async with AsyncClient(real.url) as c:
        await c.create(ContainerSpec(handle="c"))
        async with await c.run("c", ProcessSpec(path="echo", args=["hi"]), base64=True) as p:
            outputs = []
            async for out in p.outputs():
                outputs.append(out)
                if len(outputs) == 3:
                    await c.signal("c", p.process_id, "KILL")
            assert p.exit_status == 128 + 9
        assert b"".join(o.data for o in outputs if o.source == "stdout") == b"hi"
        attached = await c.attach("c", p.process_id)
        result = await attached.result()
        assert (result.stdout, result.stderr, result.exit_status) == (b"hi", "erré".encode(), 137)


async def test_events_sync_and_async(real: Real) -> None:
    async with AsyncClient(real.url) as c:
        await c.create(ContainerSpec(handle="audited"))
        records = [r async for r in await c.events()]
        raw = [line async for line in (await c.events()).lines()]
    assert any(
        isinstance(r.event, ContainerCreated) and r.event.handle == "audited" for r in records
    )
    assert len(raw) == len(records)
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs)

    def sync_events() -> list[int]:
        with Client(real.url) as sc, sc.events(since=seqs[1]) as stream:
            return [r.seq for r in stream]

    assert await trio.to_thread.run_sync(sync_events) == seqs[2:]


async def test_unix_socket_target(real_unix: Real) -> None:
    target = f"unix:{real_unix.config.bind_socket}"
    async with AsyncClient(target) as c:
        await c.ping()
        assert (await c.create(ContainerSpec(handle="u"))) == "u"

    def sync() -> list[str]:
        with Client(target) as sc:
            return sc.handles()

    assert await trio.to_thread.run_sync(sync) == ["u"]


async def test_openapi_document(real: Real) -> None:
    async with AsyncClient(real.url) as c:
        doc = await c.openapi()
    assert doc["openapi"] == "3.1.0"
    assert "/containers/{handle}/info" in doc["paths"]


async def test_sync_terminal(real: Real) -> None:
    def scenario() -> list[object]:
        with Client(real.url) as c:
            c.create(ContainerSpec(handle="t"))
            spec = ProcessSpec(path="sh", args=["prompt$"], tty=TtySize(columns=100, rows=30))
            stream = c.run("t", spec)
            stream.close()
            events: list[object] = []
            with c.terminal("t", stream.process_id) as term:
                term.resize(120, 40)
                for event in term:
                    events.append(event)
                    if isinstance(event, TerminalOutput) and event.data == b"prompt$":
                        term.signal("INT")
            return events

    events = await trio.to_thread.run_sync(scenario)
    assert TerminalOutput(b"prompt$") in events
    assert TerminalExited(128 + 2) in events
    assert isinstance(events[-1], TerminalClosed) and events[-1].code == 1000


async def test_async_terminal_of_unknown_process(real: Real) -> None:
    async with AsyncClient(real.url) as c:
        await c.create(ContainerSpec(handle="t"))
        async with await c.terminal("t", "nope") as term:
            events = [event async for event in term]
    assert isinstance(events[0], TerminalNotice)
    assert isinstance(events[0].error, e.ProcessNotFoundError)
    assert isinstance(term.last_error, e.ProcessNotFoundError)
    assert events[-1] == TerminalClosed(1008, "")


@pytest.mark.parametrize("kind", KINDS)
async def test_figures_limits_and_net_on_the_real_server(real: Real, kind: str) -> None:
    async with open_client(kind, real.url) as c:
        await c.create(ContainerSpec(handle="fig"))
        metrics = await c.metrics("fig")
        assert isinstance(metrics, ContainerMetrics)
        bulk = await c.bulk_info(["fig", "ghost"])
        assert bulk["fig"].info is not None and bulk["fig"].info.state == "active"
        assert bulk["ghost"].error is not None
        assert bulk["ghost"].error.type == "ContainerNotFoundError"
        bulk_m = await c.bulk_metrics(["fig", "ghost"])
        assert bulk_m["fig"].metrics is not None and bulk_m["ghost"].error is not None
        assert "garden" in await c.server_metrics()
        mem = await c.set_limit("fig", MemoryLimits(limit_in_bytes=64 << 20))
        assert mem.limit_in_bytes == 64 << 20
        assert await c.get_limit("fig", MemoryLimits) == mem
        assert (await c.set_limit("fig", PidLimits(max=100))).max == 100
        mapping = await c.net_in("fig", container_port=8080)
        assert mapping.container_port == 8080 and mapping.host_port > 0
        assert (await c.info("fig")).mapped_ports == [mapping]
        await c.net_out("fig", NetOutRule(network="10.0.0.0/8", protocol="tcp", port=5432))
