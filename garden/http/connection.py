"""hypercorn's per-connection server (`hypercorn.trio.tcp_server.TCPServer`), closing a
connection as soon as its client has and writing a response's head and its first body bytes
in one send; installed by `garden.http.tuning.tune_hypercorn`.

hypercorn keeps a connection whose client closed it between two requests (its socket in
CLOSE_WAIT, or dead after a reset) until its keep-alive timer fires, 75 s by default
(`--keep-alive-timeout`): each connection a client closed held a descriptor that long (the
10-19 descriptors above the start an idle server still held after `just load`), and a client
that opens and closes connections quickly could run the server out of them. Once the read side
has ended, nothing can come any more: the idle timer ends at once and the connection closes as
soon as its request, if one is running, is answered.

One send per response, not two: hypercorn writes a response's head as soon as the app starts
the response and its body in a second write. Each write to a loopback or LAN client wakes the
client once, and on this VM a wake-up costs more than the rest of a small request (`GET /ping`
3.4 ms with two writes, see docs/performance.md). So a final head (status >= 200) is held and
goes out with the next write: the first body bytes, or the end of a body-less response. A
streamed response whose first bytes are late gets its head after `HEAD_HOLD` at the latest.

It also sets a connection from a loopback address to send with Reno congestion control
(`tune_socket`): with BBR, the default of many distributions and of this machine, the kernel
paces what the server sends at BBR's bandwidth estimate, which on loopback swung between 1.7
and 40 Gbps within one stream and cut each 1.4 MB NDJSON line into ~11 partial sends, each
woken by a pacing timer. Reno does not pace: 256 MiB of process output through one run stream
cost the server 0.28 s of CPU instead of 0.45 s and the client 0.18 s instead of 0.30 s
(docs/performance.md). A loopback "network" is memory, with no congestion to control; other
peers keep the host's choice.

And a large piece of a response body goes out without being copied into its HTTP chunk:
hypercorn asks h11 for the bytes of each body piece, which h11 makes by joining the chunk
header, the data and the CRLF (a copy of every byte of a streamed response, 1.4 MB per NDJSON
line of process output). `send_h11_event`, installed on hypercorn's HTTP/1.1 protocol by
`tune_hypercorn`, takes the pieces instead (`send_with_data_passthrough`) for data of at least
GATHER_MIN bytes, and `GardenTCPServer` sends them with one `sendmsg`: ~9% less server CPU
for a large stream. Smaller pieces go as before (one send either way).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any, Final, cast

import h11
import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger("garden.http")

HEAD_HOLD: Final = 0.002  # s: the longest a response head waits for its first body bytes
LOOPBACK_CONGESTION_CONTROL: Final = b"reno"  # built into every kernel, allowed to anyone
GATHER_MIN: Final = 64 * 1024  # body pieces this large are sent without joining their framing


def _final_head(data: bytes) -> bool:
    """A response head (status line to the blank line) of a final, not a 1xx, status."""
    return data.startswith(b"HTTP/1.1 ") and data[9:10] != b"1" and data.endswith(b"\r\n\r\n")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def tune_socket(sock: Any) -> bool:
    """Reno for a TCP connection whose peer is on loopback (see the module doc); True if set.
    `sock` is a `socket.socket` or a trio socket."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        if not is_loopback(sock.getpeername()[0]):
            return False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, LOOPBACK_CONGESTION_CONTROL)
    except OSError as e:  # the peer is gone already, or a kernel without it: as it was
        log.debug("socket-tuning-skipped error=%s", e)
        return False
    return True


class GardenTCPServer(TCPServer):
    """hypercorn's connection, not outliving its peer's close by the keep-alive timeout,
    writing each response's head with its first body bytes, and a large body piece with its
    chunk framing in one `sendmsg`."""

    _read_ended = False
    _held = b""

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            gathered = isinstance(event.data, Gathered)
            if self._held:
                held, self._held = self._held, b""
                data = Gathered((held, *event.data)) if gathered else held + event.data
                event = RawData(data=cast(bytes, data))
            elif not gathered and _final_head(event.data):
                self._held = event.data
                self._task_group.spawn(self._send_held_head, event.data)
                await trio.lowlevel.checkpoint()
                return
            if gathered:
                await self._send_gathered(cast(Gathered, event.data))
                return
        elif isinstance(event, Closed) and self._held:
            await self.protocol_send(RawData(data=b""))  # the head first, if it can still go
        await super().protocol_send(event)

    async def _send_gathered(self, parts: Gathered) -> None:
        async with self.send_lock:  # as hypercorn's own RawData branch
            try:
                with trio.CancelScope(shield=True):
                    await send_gathered(self.stream, parts)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())

    async def _send_held_head(self, head: bytes) -> None:
        """The head alone, if its body has not started within `HEAD_HOLD`."""
        await trio.sleep(HEAD_HOLD)
        if self._held is head:
            await self.protocol_send(RawData(data=b""))

    async def run(self) -> None:
        stream = getattr(self.stream, "transport_stream", self.stream)  # under TLS
        sock = getattr(stream, "socket", None)
        if sock is not None:
            tune_socket(sock)
        await super().run()

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self._read_ended = True
            await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        if not self._read_ended:  # else let the connection close now
            await super()._idle_timeout()


class Gathered(tuple[bytes, ...]):
    """The pieces of one write (h11's chunk framing around a body piece), sent together."""

    __slots__ = ()


async def send_gathered(stream: trio.abc.SendStream, parts: Gathered) -> None:
    """All of `parts`, in order, with `sendmsg` (a partial send goes on where it stopped); a
    stream without a socket (TLS) gets them joined."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        await stream.send_all(b"".join(parts))
        return
    views = [memoryview(part) for part in parts if part]
    first = 0
    while first < len(views):
        try:
            sent: int = await sock.sendmsg(views[first : first + _IOV_MAX])
        except OSError as e:
            raise trio.BrokenResourceError(f"send failed: {e}") from e
        while sent:
            if sent >= len(views[first]):
                sent -= len(views[first])
                first += 1
            else:
                views[first] = views[first][sent:]
                sent = 0


_IOV_MAX = 1024


_send_h11_event_joined = H11Protocol._send_h11_event


async def send_h11_event(self: H11Protocol, event: Any) -> None:
    """hypercorn's `H11Protocol._send_h11_event`, except that a body piece of at least
    GATHER_MIN bytes is handed on as its `Gathered` pieces instead of joined (module doc)."""
    conn = self.connection
    if (
        type(event) is not h11.Data
        or len(event.data) < GATHER_MIN
        or type(conn) is not h11.Connection
    ):
        await _send_h11_event_joined(self, event)
        return
    try:
        parts = conn.send_with_data_passthrough(event)
    except h11.LocalProtocolError:  # as hypercorn does
        if conn.their_state != h11.ERROR:
            raise
    else:
        if parts is not None:  # (None only for ConnectionClosed)
            await self.send(RawData(data=cast(bytes, Gathered(parts))))
