"""hypercorn's connection as the server runs it (garden/http/connection.py): closed as soon as
its client has closed it, not after the keep-alive timeout (the descriptors `just load` found
held at its end), and a response's head written with its first body bytes."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.events import RawData

from garden.http import connection
from tests.unit.fakes import serve_fakes

CLOSE_WITHIN = 10.0  # seconds; the keep-alive timeout is 75 s (and set to 600 below)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


async def _request_then_half_close(port: int, *, requests: int) -> bytes:
    """`requests` keep-alive GET /ping on one connection, then the client's write side shut:
    everything the server sent until it closed its side."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    with sock:
        for _ in range(requests):
            await sock.send(b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
        got = b""
        while got.count(b"HTTP/1.1 200") < requests:
            got += await sock.recv(65536)
        # The server is between requests now, its idle timer running (as for a client's pooled
        # connection that it closes later): an EOF that came before, with the answer still
        # going out, always closed the connection.
        await trio.testing.wait_all_tasks_blocked()
        sock.shutdown(socket.SHUT_WR)
        with trio.fail_after(CLOSE_WITHIN):
            while chunk := await sock.recv(65536):
                got += chunk
    return got


@pytest.mark.parametrize("requests", [0, 1, 3])
async def test_the_server_closes_a_connection_its_client_closed(
    tmp_path: Path, nursery: trio.Nursery, requests: int
) -> None:
    # Before: the connection waited for its idle timer (--keep-alive-timeout) after the
    # client's close, holding its descriptor: fail_after fires here.
    url = await serve_fakes(nursery, tmp_path, keep_alive_timeout=600.0)
    got = await _request_then_half_close(_port(url), requests=requests)
    assert got.count(b"HTTP/1.1 200") == requests
    nursery.cancel_scope.cancel()


async def test_closed_connections_leave_no_descriptor(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    url = await serve_fakes(nursery, tmp_path, keep_alive_timeout=600.0)
    await _request_then_half_close(_port(url), requests=1)  # warms up what stays open
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        await _request_then_half_close(_port(url), requests=1)
    # The server closed each (the client saw EOF); its side of the socket is gone with it.
    assert len(os.listdir("/proc/self/fd")) <= before
    nursery.cancel_scope.cancel()


def test_the_server_runs_hypercorn_connections_through_it() -> None:
    from hypercorn.trio import run

    from garden.http.tuning import tune_hypercorn

    tune_hypercorn()
    assert getattr(run, "TCPServer", None) is connection.GardenTCPServer


class _Stream:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        await trio.lowlevel.checkpoint()


class _TaskGroup:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    def spawn(self, func: Any, *args: Any) -> None:
        self.nursery.start_soon(func, *args)


def _server(nursery: trio.Nursery) -> tuple[connection.GardenTCPServer, _Stream]:
    """The send side of a connection alone (no socket, no app)."""
    server = object.__new__(connection.GardenTCPServer)
    stream = _Stream()
    server.stream = stream  # type: ignore[assignment]
    server.send_lock = trio.Lock()
    server._task_group = _TaskGroup(nursery)  # type: ignore[assignment]
    return server, stream


HEAD = b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\n"


async def test_a_response_head_and_its_body_leave_in_one_write(nursery: trio.Nursery) -> None:
    """One write, one wake-up of the client (two cost ~1 ms more per request here)."""
    server, stream = _server(nursery)
    await server.protocol_send(RawData(data=HEAD))
    await server.protocol_send(RawData(data=b"{}"))
    assert stream.writes == [HEAD + b"{}"]
    await trio.sleep(2 * connection.HEAD_HOLD)  # the timer finds nothing left to send
    assert stream.writes == [HEAD + b"{}"]


async def test_a_head_without_prompt_body_goes_out_after_the_hold(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    """A stream whose first bytes are late still shows its status to the client at once."""
    server, stream = _server(nursery)
    await server.protocol_send(RawData(data=HEAD))
    assert stream.writes == []
    await trio.sleep(connection.HEAD_HOLD / 2)
    assert stream.writes == []
    await trio.sleep(connection.HEAD_HOLD)
    assert stream.writes == [HEAD]
    await server.protocol_send(RawData(data=b"late"))
    assert stream.writes == [HEAD, b"late"]


async def test_a_held_head_goes_out_with_a_gathered_first_body_piece(
    nursery: trio.Nursery,
) -> None:
    server, stream = _server(nursery)
    await server.protocol_send(RawData(data=HEAD))
    parts = connection.Gathered((b"2\r\n", b"{}", b"\r\n"))
    await server.protocol_send(RawData(data=parts))  # type: ignore[arg-type]
    assert stream.writes == [HEAD + b"2\r\n{}\r\n"]  # one write (joined: no socket here)
    await server.protocol_send(RawData(data=parts))  # type: ignore[arg-type]
    assert stream.writes[1:] == [b"2\r\n{}\r\n"]


async def test_an_interim_head_is_not_held(nursery: trio.Nursery) -> None:
    """100 Continue must reach the client before it sends the body the final answer needs."""
    server, stream = _server(nursery)
    interim = b"HTTP/1.1 100 \r\n\r\n"
    await server.protocol_send(RawData(data=interim))
    assert stream.writes == [interim]


def _congestion_control(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0")


def _server_side(client: trio.socket.SocketType) -> socket.socket:
    """The server's end of `client`'s connection: the socket in this process whose local
    address is the client's peer and whose peer is the client."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM:
                ends = (sock.getsockname(), sock.getpeername())
                if ends == (client.getpeername(), client.getsockname()):
                    return sock
        except OSError:
            pass
        sock.close()
    raise AssertionError("the server's end of the connection was not found")


async def test_a_loopback_connection_sends_with_reno(tmp_path: Path, nursery: trio.Nursery) -> None:
    url = await serve_fakes(nursery, tmp_path)
    client = trio.socket.socket()
    await client.connect(("127.0.0.1", _port(url)))
    with client:
        await client.send(b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
        assert b"200" in await client.recv(65536)  # the connection is being served
        with _server_side(client) as server_end:
            assert _congestion_control(server_end) == connection.LOOPBACK_CONGESTION_CONTROL
    nursery.cancel_scope.cancel()


def test_only_loopback_peers_are_tuned() -> None:
    assert connection.is_loopback("127.0.0.1")
    assert connection.is_loopback("127.3.2.1")
    assert connection.is_loopback("::1")
    assert connection.is_loopback("::ffff:127.0.0.1")
    assert not connection.is_loopback("10.0.0.1")
    assert not connection.is_loopback("::ffff:10.0.0.1")
    assert not connection.is_loopback("fe80::1%eth0")
    assert not connection.is_loopback("not an address")
    with socket.socket(socket.AF_UNIX) as unix:
        assert not connection.tune_socket(unix)


async def test_gathered_pieces_arrive_whole_and_in_order_across_partial_sends() -> None:
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # many partial sends
    parts = [b"155596\r\n", os.urandom(3 << 20), b"", b"\r\n", os.urandom(70_000)]
    got = bytearray()

    async def receive() -> None:
        while len(got) < sum(map(len, parts)):
            got.extend(await b.recv(65536))

    with a, b, trio.fail_after(CLOSE_WITHIN):  # a lost piece: the receiver waits forever
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await connection.send_gathered(trio.SocketStream(a), connection.Gathered(parts))
    assert got == b"".join(parts)


async def test_a_large_stream_goes_out_gathered_and_exact(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Process output in pieces above GATHER_MIN leaves the server as gathered writes (h11's
    # framing not joined to the data), and the client reads the exact bytes.
    from garden.api import ContainerSpec, ProcessSpec
    from garden.client import AsyncClient
    from tests.unit.fakes import FakeChunk, FakeProcesses

    sent: list[int] = []
    send = connection.send_gathered

    async def counting(stream: trio.abc.SendStream, parts: connection.Gathered) -> None:
        sent.append(sum(map(len, parts)))
        await send(stream, parts)

    monkeypatch.setattr(connection, "send_gathered", counting)
    processes = FakeProcesses()
    big = [os.urandom(1 << 20), os.urandom(3 << 20), os.urandom(100_000)]
    spawn = processes.spawn

    async def spawn_big(*args: object, **kwargs: object) -> object:
        facts = await spawn(*args, **kwargs)  # type: ignore[arg-type]
        processes.outputs[facts.process_dir] = [
            FakeChunk("stdout", big[0]),
            FakeChunk("stderr", b"small"),
            FakeChunk("stdout", big[1]),
            FakeChunk("stderr", big[2]),
        ]
        processes.finish(facts, 3)
        return facts

    setattr(processes, "spawn", spawn_big)  # noqa: B010 (a method of a final class)
    url = await serve_fakes(nursery, tmp_path, processes=processes)
    async with AsyncClient(url) as c:
        await c.create(ContainerSpec(handle="big"))
        stream = await c.run("big", ProcessSpec(path="cat"), base64=True)
        result = await stream.result()
    assert result.exit_status == 3
    assert result.stdout == big[0] + big[1]
    assert result.stderr == b"small" + big[2]
    assert len(sent) == 3  # the three large lines; the small ones went as before
    nursery.cancel_scope.cancel()
