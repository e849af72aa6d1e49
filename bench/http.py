"""A small HTTP/1.1 client on trio for the benchmarks: keep-alive connections over TCP or a
unix socket, Content-Length and chunked bodies, NDJSON lines, and the raw stream of a hijacked
connection (Docker's exec). Leaner than httpx, so that the client is less often what limits a
measurement (the requests/s benchmark reports the client's CPU time as well).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import final

import trio

RECV_SIZE = 1 << 20


class HttpError(Exception):
    """A malformed or unexpected answer."""


@final
class _Reader:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""
        self.pos = 0

    async def _more(self) -> bool:
        data = bytes(await self.stream.receive_some(RECV_SIZE))
        if not data:
            return False
        self.buf = self.buf[self.pos :] + data if self.pos < len(self.buf) else data
        self.pos = 0
        return True

    async def line(self) -> bytes:
        """Up to CRLF (not included)."""
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                out = self.buf[self.pos : end]
                self.pos = end + 2
                return out
            if not await self._more():
                raise HttpError("connection closed in the middle of a line")

    async def exactly(self, n: int) -> AsyncIterator[bytes]:
        """`n` bytes, as the pieces that arrive."""
        while n > 0:
            if self.pos >= len(self.buf) and not await self._more():
                raise HttpError(f"connection closed with {n} body bytes missing")
            piece = self.buf[self.pos : self.pos + n]
            self.pos += len(piece)
            n -= len(piece)
            yield piece

    async def until_eof(self) -> AsyncIterator[bytes]:
        while True:
            if self.pos < len(self.buf):
                piece = self.buf[self.pos :]
                self.pos = len(self.buf)
                yield piece
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

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, dechunked, as it arrives. Reading it to the end frees the connection."""
        if self._consumed:
            raise HttpError("body already read")
        self._consumed = True
        reader = self._conn._reader
        if self._method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
            return
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.line()).split(b";", 1)[0], 16)
                if size == 0:
                    while await reader.line():  # trailers
                        pass
                    return
                async for piece in reader.exactly(size):
                    yield piece
                if await reader.line() != b"":
                    raise HttpError("bad chunk terminator")
        elif "content-length" in self.headers:
            async for piece in reader.exactly(int(self.headers["content-length"])):
                yield piece
        else:
            self._conn.reusable = False
            async for piece in reader.until_eof():
                yield piece

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    async def lines(self) -> AsyncIterator[bytes]:
        """The body split at newlines (NDJSON), without the newline."""
        pending: list[bytes] = []
        async for piece in self.chunks():
            start = 0
            while (nl := piece.find(b"\n", start)) >= 0:
                if pending:
                    pending.append(piece[start:nl])
                    yield b"".join(pending)
                    pending = []
                else:
                    yield piece[start:nl]
                start = nl + 1
            if start < len(piece):
                pending.append(piece[start:])
        if pending:
            yield b"".join(pending)

    async def raw(self) -> AsyncIterator[bytes]:
        """Everything the server sends after the headers, until it closes (hijacked stream)."""
        self._consumed = True
        self._conn.reusable = False
        async for piece in self._conn._reader.until_eof():
            yield piece


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


@final
class Pool:
    """Connections to one address, reused while they are kept alive."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._idle: list[Connection] = []

    async def call(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = self._idle.pop() if self._idle else await Connection.open(self.address)
        try:
            result = await conn.call(method, target, body)
        except BaseException:
            await conn.aclose()
            raise
        await self.release(conn)
        return result

    async def take(self) -> Connection:
        return self._idle.pop() if self._idle else await Connection.open(self.address)

    async def release(self, conn: Connection) -> None:
        if conn.reusable:
            self._idle.append(conn)
        else:
            await conn.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()
