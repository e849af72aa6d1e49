"""A small HTTP/1.1 client on trio for the benchmarks: keep-alive connections over TCP or a
unix socket, Content-Length and chunked bodies, NDJSON lines, and the raw stream of a hijacked
connection (Docker's exec). Leaner than httpx, so that the client is less often what limits a
measurement (the requests/s benchmark reports the client's CPU time as well).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import final

import trio

from garden.client.recvbuf import complete_lines, make_room

RECV_SIZE = 1 << 20
BUFFER_SIZE = 4 << 20  # a whole NDJSON line of 1 MiB of output (1.4 MB of base64) and more


class HttpError(Exception):
    """A malformed or unexpected answer."""


@final
class _Reader:
    """Received bytes in one buffer that is reused: `recv_into` its free end; when that is
    short, the unread bytes `buf[start:end]` move to its front (a memmove: no allocation, so no
    page faults); a larger buffer only for a piece longer than it holds. Pieces are handed out
    as (start, stop) offsets into `buf`, valid until the next read."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.socket = getattr(stream, "socket", None)  # a SocketStream: receive into the buffer
        self.buf = bytearray(BUFFER_SIZE)
        self.mv = memoryview(self.buf)
        self.start = 0
        self.end = 0

    def _room(self, want: int) -> None:
        """At least `want` free bytes after the unread ones."""
        self.buf, self.mv, self.start, self.end = make_room(
            self.buf, self.mv, self.start, self.end, want
        )

    async def _more(self, want: int = RECV_SIZE) -> bool:
        """Receive what has come (at least one byte, or False at the end of the stream), with
        room for `want` bytes at least."""
        self._room(want)
        free = self.mv[self.end :]
        if self.socket is not None:
            n: int = await self.socket.recv_into(free)
        else:
            data = await self.stream.receive_some(len(free))
            n = len(data)
            free[:n] = data
        self.end += n
        return n > 0

    async def fill(self, n: int) -> int:
        """At least `n` unread bytes, contiguous in `buf`; returns where they start."""
        while self.end - self.start < n:
            if not await self._more(min(RECV_SIZE, n - (self.end - self.start))):
                raise HttpError(f"connection closed with {n - self.end + self.start} bytes missing")
        return self.start

    async def line(self) -> bytes:
        """Up to CRLF (not included)."""
        searched = 0  # unread bytes known to hold no CRLF
        while True:
            end = self.buf.find(b"\r\n", self.start + searched, self.end)
            if end >= 0:
                out = bytes(self.mv[self.start : end])
                self.start = end + 2
                return out
            searched = max(0, self.end - self.start - 1)
            if not await self._more():
                raise HttpError("connection closed in the middle of a line")

    async def exactly(self, n: int) -> AsyncIterator[tuple[int, int]]:
        """`n` bytes as the pieces that arrive: offsets into `buf`, valid until the next."""
        while n > 0:
            if self.start >= self.end and not await self._more():
                raise HttpError(f"connection closed with {n} body bytes missing")
            start = self.start
            self.start = min(self.end, start + n)
            n -= self.start - start
            yield start, self.start

    async def until_eof(self) -> AsyncIterator[tuple[int, int]]:
        while True:
            if self.start < self.end:
                start, self.start = self.start, self.end
                yield start, self.end
            if not await self._more():
                return


@final
class Response:
    def __init__(self, conn: Connection, status: int, headers: dict[str, str], method: str):
        self._conn = conn
        self.status = status
        self.headers = headers
        self._method = method
        self._consumed = False

    def _body_kind(self) -> str:
        if self._consumed:
            raise HttpError("body already read")
        self._consumed = True
        if self._method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
            return "none"
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            return "chunked"
        if "content-length" in self.headers:
            return "length"
        self._conn.reusable = False
        return "eof"

    async def _chunk_size(self) -> int:
        """The next chunk's size; 0 (and the trailers read) at the end of the body."""
        reader = self._conn._reader
        size = int((await reader.line()).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.line():  # trailers
                pass
        return size

    async def _chunk_end(self) -> None:
        if await self._conn._reader.line() != b"":
            raise HttpError("bad chunk terminator")

    async def _pieces(self, whole_chunks: bool) -> AsyncIterator[tuple[int, int]]:
        """The body, dechunked, as offsets into the connection's buffer, each valid until the
        next; with `whole_chunks`, each HTTP chunk in one piece."""
        reader = self._conn._reader
        kind = self._body_kind()
        if kind == "chunked":
            while size := await self._chunk_size():
                if whole_chunks:
                    start = await reader.fill(size)
                    reader.start += size
                    yield start, start + size
                else:
                    async for piece in reader.exactly(size):
                        yield piece
                await self._chunk_end()
        elif kind == "length":
            async for piece in reader.exactly(int(self.headers["content-length"])):
                yield piece
        elif kind == "eof":
            async for piece in reader.until_eof():
                yield piece

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, dechunked, as it arrives. Reading it to the end frees the connection."""
        async for start, stop in self._pieces(whole_chunks=False):
            yield bytes(self._conn._reader.mv[start:stop])

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    async def lines(self) -> AsyncIterator[bytes | memoryview]:
        """The body split at newlines (NDJSON), without the newline, each valid until the next
        is asked for (copy one to keep it). A line inside one HTTP chunk (the server sends one
        line a chunk) is a view into the receive buffer, not a copy."""
        reader = self._conn._reader
        pending = bytearray()  # the start of a line that goes on in the next piece
        async for pos, stop in self._pieces(whole_chunks=True):
            for line in complete_lines(reader.buf, reader.mv, pos, stop, pending):
                yield line
        if pending:
            yield bytes(pending)

    async def raw(self) -> AsyncIterator[bytes]:
        """Everything the server sends after the headers, until it closes (hijacked stream)."""
        self._consumed = True
        self._conn.reusable = False
        reader = self._conn._reader
        async for start, stop in reader.until_eof():
            yield bytes(reader.mv[start:stop])


@final
class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, stream: trio.abc.Stream, host: str) -> None:
        self._stream = stream
        self._host = host
        self._reader = _Reader(stream)
        self.reusable = True

    @classmethod
    async def open(cls, address: str) -> Connection:
        """`address` is "http://HOST:PORT" or "unix:/path/to.sock"."""
        if address.startswith("unix:"):
            stream: trio.abc.Stream = await trio.open_unix_socket(address[5:])
            return cls(stream, "localhost")
        hostport = address.removeprefix("http://").rstrip("/")
        host, _, port = hostport.rpartition(":")
        return cls(await trio.open_tcp_stream(host, int(port)), hostport)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send a request and read the answer's headers; the caller reads the body."""
        head = [f"{method} {target} HTTP/1.1", f"Host: {self._host}"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode()
        await self._stream.send_all(data + body if body else data)
        status_line = await self._reader.line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {status_line[:80]!r}")
        fields: dict[str, str] = {}
        while line := await self._reader.line():
            name, _, value = line.partition(b":")
            fields[name.decode().strip().lower()] = value.decode().strip()
        if fields.get("connection", "").lower() == "close":
            self.reusable = False
        return Response(self, int(parts[1]), fields, method)

    async def call(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        """A request whose whole answer is read: (status, body)."""
        response = await self.request(method, target, body)
        return response.status, await response.read()


# A pooled connection idle longer than this is closed rather than reused: servers close idle
# keep-alive connections (garden-trio after 75 s, Docker's after its own timeout), and a
# benchmark that waits for another engine's slow round (Podman's 200 processes: ~50 s a round)
# would otherwise send its next requests into connections the server has closed.
MAX_IDLE = 20.0


@final
class Pool:
    """Connections to one address, reused while they are kept alive (and not idle too long)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._idle: list[tuple[float, Connection]] = []

    async def _get(self) -> Connection:
        now = trio.current_time()
        while self._idle:
            since, conn = self._idle.pop()
            if now - since <= MAX_IDLE:
                return conn
            await conn.aclose()
        return await Connection.open(self.address)

    async def call(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = await self._get()
        try:
            result = await conn.call(method, target, body)
        except BaseException:
            await conn.aclose()
            raise
        await self.release(conn)
        return result

    async def take(self) -> Connection:
        return await self._get()

    async def release(self, conn: Connection) -> None:
        if conn.reusable:
            self._idle.append((trio.current_time(), conn))
        else:
            await conn.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, conn in idle:
            await conn.aclose()
