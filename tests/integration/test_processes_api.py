"""Processes in real containers through the API: exact output, exit statuses, users, env,
stdin, signals, terminals, attach, stop, and nothing left after destroy."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.integration.conftest import Server

pytestmark = pytest.mark.root


async def create(server: Server, handle: str, **spec: Any) -> None:
    r = await server.client.post("/containers", json={"handle": handle, **spec})
    assert r.status_code == 200, r.text


async def run(
    server: Server, handle: str, spec: dict[str, Any], *, encoding: str | None = None
) -> list[dict[str, Any]]:
    params = {"encoding": encoding} if encoding else None
    async with server.client.stream(
        "POST", f"/containers/{handle}/processes", json=spec, params=params
    ) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) async for line in r.aiter_lines() if line]


def output(payloads: Sequence[dict[str, Any]], source: str, *, b64: bool = False) -> bytes:
    parts = [p["data"] for p in payloads if p.get("source") == source]
    if b64:
        return b"".join(base64.b64decode(p) for p in parts)
    return "".join(parts).encode()


def exit_status(payloads: Sequence[dict[str, Any]]) -> int:
    assert "exit_status" in payloads[-1], payloads[-1]
    return int(payloads[-1]["exit_status"])


async def test_run_streams_output_and_exit_status(server: Server) -> None:
    await create(server, "p1")
    payloads = await run(
        server, "p1", {"path": "sh", "args": ["-c", "echo out; echo err >&2; exit 7"]}
    )
    pid = payloads[0]["process_id"]
    assert payloads[0] == {"process_id": pid}
    assert all(p["process_id"] == pid for p in payloads)
    assert output(payloads, "stdout") == b"out\n"
    assert output(payloads, "stderr") == b"err\n"
    assert exit_status(payloads) == 7
    info = (await server.client.get("/containers/p1/info")).json()
    assert info["process_ids"] == []


@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_exact_bytes_of_5_mib(server: Server, kind: str) -> None:
    await create(server, "bytes")
    source = "cat /dev/urandom" if kind == "binary" else "yes 'the quick brown fox, é€ 123'"
    script = f"{source} | head -c 5242880 > /tmp/b; sha256sum /tmp/b >&2; cat /tmp/b"
    payloads = await run(server, "bytes", {"path": "sh", "args": ["-c", script]}, encoding="base64")
    data = output(payloads, "stdout", b64=True)
    assert len(data) == 5 * 1024 * 1024
    reported = output(payloads, "stderr", b64=True).split()[0].decode()
    assert hashlib.sha256(data).hexdigest() == reported
    assert exit_status(payloads) == 0


async def test_text_never_splits_a_character(server: Server) -> None:
    await create(server, "utf8")
    payloads = await run(
        server,
        "utf8",
        {
            "path": "sh",
            "args": ["-c", "i=0; while [ $i -lt 20000 ]; do printf 'é€'; i=$((i+1)); done"],
        },
    )
    text = "".join(p["data"] for p in payloads if p.get("source") == "stdout")
    assert text == "é€" * 20000


async def test_env_user_dir_and_rlimits(server: Server) -> None:
    await create(server, "env", env=["A=container", "B=container"])
    payloads = await run(
        server,
        "env",
        {
            "path": "sh",
            "args": ["-c", "echo $A $B $C; id -u; pwd; ulimit -n"],
            "env": ["B=process", "C=process"],
            "rlimits": {"nofile": 512},
        },
    )
    assert output(payloads, "stdout").decode().split("\n")[:4] == [
        "container process process",
        "1000",
        "/home/vcap",
        "512",
    ]
    payloads = await run(
        server, "env", {"path": "sh", "args": ["-c", "id -u; pwd"], "privileged": True}
    )
    assert output(payloads, "stdout") == b"0\n/root\n"
    payloads = await run(server, "env", {"path": "pwd", "dir": "/tmp/made/here", "user": "root"})
    assert output(payloads, "stdout") == b"/tmp/made/here\n"


async def test_bad_process_requests(server: Server) -> None:
    await create(server, "bad")
    c = server.client
    r = await c.post("/containers/bad/processes", json={"path": "/no/such/binary"})
    assert r.status_code == 404
    assert r.json()["type"] == "ExecutableNotFoundError"
    r = await c.post("/containers/bad/processes", json={"path": "sh", "user": "nobody-here"})
    assert r.status_code == 400
    r = await c.post("/containers/bad/processes", json={"args": ["x"]})
    assert r.status_code == 400
    r = await c.post("/containers/nope/processes", json={"path": "sh"})
    assert r.status_code == 404
    r = await c.get("/containers/bad/processes/unknown")
    assert r.status_code == 404
    assert r.json()["type"] == "ProcessNotFoundError"
    r = await c.post(
        "/containers/bad/processes", json={"path": "true", "rlimits": {"nofile": 2**40}}
    )
    assert r.status_code == 400


async def test_duplicate_id_of_running_process_is_409(server: Server) -> None:
    await create(server, "dup")
    c = server.client
    async with c.stream(
        "POST", "/containers/dup/processes", json={"path": "sleep", "args": ["100"], "id": "same"}
    ) as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        assert json.loads(await lines.__anext__()) == {"process_id": "same"}
        r2 = await c.post("/containers/dup/processes", json={"path": "true", "id": "same"})
        assert r2.status_code == 409
        assert r2.json()["type"] == "ProcessIdInUseError"
        info = (await c.get("/containers/dup/info")).json()
        assert info["process_ids"] == ["same"]
        sig = await c.post("/containers/dup/processes/same/signal", json={"signal": "TERM"})
        assert sig.status_code == 200, sig.text
        rest = [json.loads(line) async for line in lines if line]
    assert rest[-1] == {"process_id": "same", "exit_status": 143}
    # An exited process's id can be used again.
    payloads = await run(server, "dup", {"path": "true", "id": "same"})
    assert exit_status(payloads) == 0


async def test_disconnect_attach_stdin(server: Server) -> None:
    await create(server, "att")
    c = server.client
    spec = {"path": "sh", "args": ["-c", "echo one; read x; echo got $x; exit 4"], "stdin": True}
    async with c.stream("POST", "/containers/att/processes", json=spec) as r:
        lines = r.aiter_lines()
        pid = json.loads(await lines.__anext__())["process_id"]
        assert json.loads(await lines.__anext__())["data"] == "one\n"
    # The client went away; the process did not.
    info = (await c.get("/containers/att/info")).json()
    assert info["process_ids"] == [pid]
    results: list[list[dict[str, Any]]] = []

    async def attach() -> None:
        async with c.stream("GET", f"/containers/att/processes/{pid}") as r:
            assert r.status_code == 200
            results.append([json.loads(line) async for line in r.aiter_lines() if line])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attach)
        nursery.start_soon(attach)
        r = await c.put(f"/containers/att/processes/{pid}/stdin", content=b"hello\n")
        assert r.status_code == 200, r.text
    for payloads in results:
        assert output(payloads, "stdout") == b"one\ngot hello\n"
        assert exit_status(payloads) == 4
    # Attaching to an exited process replays its output and status.
    async with c.stream("GET", f"/containers/att/processes/{pid}") as r:
        payloads = [json.loads(line) async for line in r.aiter_lines() if line]
    assert output(payloads, "stdout") == b"one\ngot hello\n"
    assert exit_status(payloads) == 4


async def test_tty(server: Server) -> None:
    await create(server, "tty")
    payloads = await run(
        server,
        "tty",
        {"path": "sh", "args": ["-c", "tty; stty size"], "tty": {"columns": 132, "rows": 40}},
    )
    out = output(payloads, "stdout").decode()
    assert out.startswith("/dev/pts/")
    assert "\r\n" in out
    assert "40 132" in out


async def test_stop_kills_processes_and_refuses_new_ones(server: Server) -> None:
    await create(server, "stop")
    c = server.client
    async with c.stream(
        "POST", "/containers/stop/processes", json={"path": "sleep", "args": ["1000"]}
    ) as r:
        lines = r.aiter_lines()
        pid = json.loads(await lines.__anext__())["process_id"]
        assert (await c.put("/containers/stop/stop", json={})).status_code == 200
        rest = [json.loads(line) async for line in lines if line]
    assert rest[-1] == {"process_id": pid, "exit_status": 143}
    info = (await c.get("/containers/stop/info")).json()
    assert info["state"] == "stopped"
    assert info["process_ids"] == []
    r = await c.post("/containers/stop/processes", json={"path": "true"})
    assert r.status_code == 409
    assert r.json()["type"] == "ContainerStoppedError"


async def test_destroy_leaves_no_monitor(server: Server) -> None:
    await create(server, "gone")
    c = server.client
    for _ in range(3):
        async with c.stream(
            "POST", "/containers/gone/processes", json={"path": "sleep", "args": ["1000"]}
        ) as r:
            await r.aiter_lines().__anext__()
    assert len((await c.get("/containers/gone/info")).json()["process_ids"]) == 3
    assert (await c.delete("/containers/gone")).status_code == 200
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert server.config.state_dir not in ps


async def test_many_concurrent_processes(server: Server) -> None:
    await create(server, "many")
    statuses: list[int] = []

    async def one(i: int) -> None:
        payloads = await run(
            server, "many", {"path": "sh", "args": ["-c", f"echo {i}; exit {i % 7}"]}
        )
        assert output(payloads, "stdout") == f"{i}\n".encode()
        statuses.append(exit_status(payloads))

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(one, i)
    assert sorted(statuses) == sorted(i % 7 for i in range(20))


async def test_client_gets_http_errors_not_hangs(server: Server) -> None:
    # A stream request for an unknown container answers at once with JSON.
    with trio.fail_after(10):
        r = await server.client.post("/containers/none/processes", json={"path": "true"})
    assert r.status_code == 404
    assert isinstance(r, httpx.Response)


async def test_a_tty_has_its_size_before_its_program_runs(server: Server) -> None:
    """Regression (the intermittent test_websocket_terminal failure): crun sizes an exec'd
    terminal from outside only after the process has exec'd, so under load `stty size` saw
    0x0 ("stty: standard input") in ~40% of 20 TTY processes started at once."""
    await create(server, "ttysize")
    spec = {
        "path": "sh",
        "args": ["-c", "stty size; cat /proc/$$/comm; true"],
        "tty": {"columns": 80, "rows": 24},
    }
    outs: list[bytes] = []

    async def one() -> None:
        outs.append(output(await run(server, "ttysize", spec), "stdout"))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    # The size from the first instruction on, in the program itself (the helper that waited
    # for the size has exec'd it: same pid, its name now).
    assert outs == [b"24 80\r\nsh\r\n"] * 20


async def test_websocket_terminal(server: Server) -> None:
    from tests.wsclient import WebSocket

    await create(server, "ws")
    # conmon applies a resize (ctl FIFO) and stdin (attach socket) independently: the process
    # reports its size after every line until it sees the new one.
    script = (
        "stty size; while read line; do echo got:$line; s=$(stty size); echo size:$s;"
        ' [ "$s" = "30 100" ] && break; done; exit 5'
    )
    spec = {
        "path": "sh",
        "args": ["-c", script],
        "tty": {"columns": 80, "rows": 24},
        "id": "term",
    }
    async with server.client.stream("POST", "/containers/ws/processes", json=spec) as r:
        assert json.loads(await r.aiter_lines().__anext__()) == {"process_id": "term"}
    url = httpx.URL(server.url)
    assert url.port is not None
    ws = await WebSocket.connect("127.0.0.1", url.port, "/containers/ws/processes/term/ws")
    received = b""
    exit_message = None
    with trio.fail_after(30):
        while b"24 80" not in received:
            message = await ws.receive()
            assert isinstance(message, bytes)
            received += message
        await ws.send_text(json.dumps({"resize": {"columns": 100, "rows": 30}}))
        await ws.send_bytes(b"hello\r")
        while True:
            message = await ws.receive()
            if message is None:
                break
            if isinstance(message, str):
                exit_message = json.loads(message)
                continue
            received += message
            if received.rstrip().endswith(b"size:24 80"):
                await ws.send_bytes(b"again\r")
    await ws.aclose()
    assert b"got:hello" in received
    assert b"size:30 100" in received
    assert exit_message == {"exit_status": 5}


async def test_batch_processes_run_under_garden_monitor(server: Server) -> None:
    """The default `--process-monitor auto` finds the garden-monitor setup built: a batch
    process runs under it, one with stdin under conmon (ProcessStarted says which)."""
    await create(server, "mon")
    batch = await run(server, "mon", {"path": "sh", "args": ["-c", "echo hi"]})
    assert exit_status(batch) == 0 and output(batch, "stdout") == b"hi\n"
    spec = {"path": "cat", "stdin": True, "id": "withstdin"}
    async with server.client.stream("POST", "/containers/mon/processes", json=spec) as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        assert json.loads(await anext(lines)) == {"process_id": "withstdin"}
        signal = await server.client.post(
            "/containers/mon/processes/withstdin/signal", json={"signal": 9}
        )
        assert signal.status_code == 200, signal.text
        assert [json.loads(line) async for line in lines if line][-1]["exit_status"] == 137
    monitors = {}
    for line in Path(server.config.state_dir, "events.log").read_text().splitlines():
        event = json.loads(line.split(" ", 1)[1])["event"]
        if event["type"] == "ProcessStarted":
            monitors[event["process_id"]] = event["facts"]["monitor"]
    assert monitors == {batch[0]["process_id"]: "garden-monitor", "withstdin": "conmon"}
