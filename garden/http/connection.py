"""hypercorn's per-connection server (`hypercorn.trio.tcp_server.TCPServer`) with two changes,
installed by `garden.http.tuning.tune_hypercorn`:

- Sized reads (`SizedReceiveStream`): `recv(1 MiB)` allocates 1 MiB and then shrinks it to what
  came, so a request of 300 bytes left a live 300-byte chunk where a 1 MiB block began and a
  hole just too small for the next 1 MiB read: glibc's heap spread with every request
  (docs/performance.md#load-test). Asking the kernel how much is queued (FIONREAD) and reading
  exactly that (at most the 1 MiB) makes the same reads, each allocated at its size.
- Closing when the peer has: hypercorn keeps a connection whose client closed it (CLOSE_WAIT,
  or a dead TCP socket after a reset) open until its keep-alive timer fires, 75 s by default,
  so each connection a client closed held a descriptor that long (11-13 of them after `just
  load`; a client that opens and closes connections quickly could run the server out of
  descriptors). Once the read side has ended, the idle timer ends at once and the connection
  closes as soon as its request, if any, is answered.
"""

from __future__ import annotations

import array
import fcntl
import termios
from typing import Any, Final, final

import trio
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, LifespanState

SOCKET_READ: Final = 1 << 20  # the most one read takes (hypercorn's own is 64 KiB)
UNKNOWN_READ: Final = 4096  # readable with nothing queued: the end of the stream (or an error)


def queued_bytes(fd: int) -> int:
    """The bytes waiting in a socket's receive queue (FIONREAD); 0 when it cannot say."""
    n = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, n, True)
    except OSError:
        return 0
    return n[0]


@final
class SizedReceiveStream(trio.abc.HalfCloseableStream):
    """A `trio.SocketStream` whose `receive_some(max_bytes)` reads what is queued, at most
    `max_bytes`, into a buffer of that size: no 1 MiB allocation shrunk to a few hundred
    bytes per request. Everything else is the socket stream's."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.transport = stream
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = SOCKET_READ if max_bytes is None else max_bytes
        fd = self.socket.fileno()
        if fd < 0:  # closed: the stream says so
            return await self.transport.receive_some(limit)
        queued = queued_bytes(fd)
        if queued <= 0:
            await trio.lowlevel.wait_readable(self.socket)
            queued = queued_bytes(fd) or UNKNOWN_READ
        return await self.transport.receive_some(min(limit, queued))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()


class GardenTCPServer(TCPServer):
    """hypercorn's connection, reading through `SizedReceiveStream` and not outliving its
    peer's close by the keep-alive timeout."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        stream: Any,  # a trio.SocketStream (or an SSLStream when hypercorn does TLS: kept)
    ) -> None:
        if isinstance(stream, trio.SocketStream):
            stream = SizedReceiveStream(stream)
        super().__init__(app, config, context, state, stream)
        self._read_ended = False

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self._read_ended = True
            await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        if not self._read_ended:  # else nothing can come any more: let the connection close
            await super()._idle_timeout()
