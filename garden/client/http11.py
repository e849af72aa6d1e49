"""A small blocking HTTP/1.1 client over one socket, for the sync client and the CLI.

Why not http.client or httpx: importing http.client costs ~30 ms here (it pulls in ssl and
email) and httpx ~130 ms, against a budget of 150 ms for a whole `garden run H -- echo hi`
(docs/adr/client-transport.md). This module imports only `_socket`; `socket` and `ssl` are
imported when a target is https.

It speaks what the Garden server and a TLS proxy in front of it answer: Content-Length,
chunked and read-until-close bodies, 1xx interim answers, keep-alive. Request bodies are bytes
(Content-Length) or an iterable of bytes (chunked, streamed as produced).
"""

from __future__ import annotations

import _socket
from collections.abc import Iterable, Iterator
from typing import Any, final

from garden.client.recvbuf import complete_lines, make_room
from garden.client.target import Target
from garden.errors import ServerUnreachableError, UnexpectedResponseError

MAX_HEAD = 64 * 1024
READ_MIN = 64 * 1024  # room made for each receive at least
BUFFER_SIZE = 256 * 1024  # to start with; it grows to hold the longest NDJSON line
WHOLE_CHUNK_MAX = 64 << 20  # lines of a chunk up to this size are cut from it in place

Body = bytes | Iterable[bytes] | None


def connect(target: Target, timeout: float | None) -> _socket.socket:
    """A connected socket to the target (TLS-wrapped for https). Plain connections use the
    C `_socket` module: `socket` spends ~5 ms of start-up building its enums."""
    try:
        if target.scheme == "https":
            import socket
            import ssl

            raw = socket.create_connection((target.host, target.port), timeout=timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return ssl.create_default_context().wrap_socket(raw, server_hostname=target.host)
        if target.socket_path:
            return _connected(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, target.socket_path, timeout)
        error: OSError = OSError(f"no address for {target.host}")
        for family, kind, proto, _, address in _socket.getaddrinfo(
            target.host, target.port, 0, _socket.SOCK_STREAM
        ):
            try:
                sock = _connected(family, kind, proto, address, timeout)
            except OSError as exc:
                error = exc
                continue
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            return sock
        raise error
    except OSError as exc:
        raise ServerUnreachableError(f"cannot connect to {target}: {exc}") from exc


def _connected(
    family: int, kind: int, proto: int, address: str | tuple[Any, ...], timeout: float | None
) -> _socket.socket:
    sock = _socket.socket(family, kind, proto)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


@final
class Connection:
    """One HTTP/1.1 connection: send a request, read its response, maybe reuse."""

    def __init__(self, target: Target, timeout: float | None) -> None:
        self.target = target
        self.timeout = timeout
        self.sock = connect(target, timeout)
        # Received bytes: one buffer, reused (recv_into its free end; unread bytes
        # `_buf[_start:_end]` moved to its front when the end is reached), grown only for a
        # piece longer than it holds: a 1.4 MB NDJSON line of process output is copied once,
        # without new allocations (and page faults) per read.
        self._buf = bytearray(BUFFER_SIZE)
        self._mv = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.used = False
        self.closed = False

    # --- reading ---

    def _room(self, want: int) -> None:
        """At least `want` free bytes after the unread ones, and at least READ_MIN: the
        unread bytes moved to the front if that makes the room, else a larger buffer."""
        self._buf, self._mv, self._start, self._end = make_room(
            self._buf, self._mv, self._start, self._end, max(want, READ_MIN)
        )

    def _fill(self, want: int = 0) -> bool:
        """Receive what has come into the buffer, with room for `want` bytes made first;
        False at the end of the stream."""
        self._room(want)
        try:
            n = self.sock.recv_into(self._mv[self._end :])
        except TimeoutError as exc:
            raise ServerUnreachableError(f"{self.target}: no answer in {self.timeout} s") from exc
        except OSError as exc:
            raise ServerUnreachableError(f"{self.target}: connection broke: {exc}") from exc
        self._end += n
        return n > 0

    def _take(self, n: int) -> bytes:
        out = bytes(self._mv[self._start : self._start + n])
        self._start += n
        return out

    def _read_until(self, marker: bytes, limit: int) -> bytes | None:
        """Bytes up to and including `marker`, or None if the stream ended first."""
        searched = 0  # unread bytes known not to hold the marker
        while True:
            at = self._buf.find(marker, self._start + searched, self._end)
            if at >= 0:
                return self._take(at + len(marker) - self._start)
            if self._end - self._start > limit:
                raise UnexpectedResponseError(f"{self.target}: header line too long")
            searched = max(0, self._end - self._start - len(marker) + 1)
            if not self._fill():
                return None

    def _read_exact(self, n: int) -> bytes:
        self._wait_for(n)
        return self._take(n)

    def _wait_for(self, n: int) -> None:
        """At least `n` unread bytes in the buffer."""
        while self._end - self._start < n:
            if not self._fill(n - (self._end - self._start)):
                raise ServerUnreachableError(f"{self.target}: connection closed mid-body")

    # --- writing ---

    def send_request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: Body
    ) -> None:
        self.used = True
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.target.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}")
        elif body is not None:
            lines.append("Transfer-Encoding: chunked")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            if isinstance(body, bytes):
                self.sock.sendall(head + body)
            elif body is None:
                self.sock.sendall(head)
            else:
                self.sock.sendall(head)
                for chunk in body:
                    if chunk:
                        self.sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                self.sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            # The server may have answered early (an error before reading the whole body):
            # the caller reads that answer next.
            pass
        except TimeoutError as exc:
            raise ServerUnreachableError(f"{self.target}: send timed out") from exc
        except OSError as exc:
            raise ServerUnreachableError(f"{self.target}: connection broke: {exc}") from exc

    def read_head(self, *, method_is_head: bool = False) -> tuple[int, dict[str, str], bool]:
        """Status, headers (lower-case names, repeated ones joined by ", ") and whether the
        server speaks HTTP/1.1. Interim 1xx answers (except 101) are skipped."""
        while True:
            head = self._read_until(b"\r\n\r\n", MAX_HEAD)
            if head is None:
                raise ServerUnreachableError(f"{self.target}: connection closed before an answer")
            status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
            version, _, rest = status_line.partition(" ")
            try:
                status = int(rest[:3])
            except ValueError:
                raise UnexpectedResponseError(
                    f"{self.target}: bad status line {status_line!r}"
                ) from None
            headers: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            if 100 <= status < 200 and status != 101:
                continue
            if status in (204, 304) or method_is_head:
                headers[":no-body"] = "1"
            return status, headers, version == "HTTP/1.1"

    def body_chunks(self, headers: dict[str, str], keep_alive: bool) -> Iterator[bytes]:
        """The body as it arrives. Leaves the connection reusable when it ran to the end and
        `keep_alive` holds."""
        for start, stop in self._body_pieces(headers, keep_alive, whole_chunks=False):
            yield bytes(self._mv[start:stop])

    def body_lines(self, headers: dict[str, str], keep_alive: bool) -> Iterator[bytes]:
        """The body split at newlines, without them; a last line without one is yielded too.
        A line inside one HTTP chunk (the server sends one NDJSON line a chunk) is copied out
        of the buffer once."""
        pending = bytearray()  # the start of a line that goes on in the next piece
        for pos, stop in self._body_pieces(headers, keep_alive, whole_chunks=True):
            for line in complete_lines(self._buf, self._mv, pos, stop, pending):
                yield bytes(line)
        if pending:
            yield bytes(pending)

    def _body_pieces(
        self, headers: dict[str, str], keep_alive: bool, *, whole_chunks: bool
    ) -> Iterator[tuple[int, int]]:
        """The body as (start, stop) offsets into the buffer, each valid until the next; with
        `whole_chunks`, an HTTP chunk of up to WHOLE_CHUNK_MAX bytes in one piece."""
        if headers.get(":no-body"):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                line = self._read_until(b"\r\n", MAX_HEAD)
                if line is None:
                    raise ServerUnreachableError(f"{self.target}: connection closed mid-body")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise UnexpectedResponseError(f"{self.target}: bad chunk size") from None
                if size == 0:
                    while (trailer := self._read_until(b"\r\n", MAX_HEAD)) not in (b"\r\n", None):
                        del trailer
                    break
                if whole_chunks and size <= WHOLE_CHUNK_MAX:
                    self._wait_for(size)
                    self._start += size
                    yield self._start - size, self._start
                else:
                    yield from self._pieces_of(size)
                self._read_exact(2)
        elif "content-length" in headers:
            yield from self._pieces_of(int(headers["content-length"]))
        else:
            keep_alive = False
            while self._start < self._end or self._fill():
                start, self._start = self._start, self._end
                yield start, self._end
        if not keep_alive:
            self.close()

    def _pieces_of(self, n: int) -> Iterator[tuple[int, int]]:
        """The next `n` bytes as they arrive."""
        while n:
            if self._start == self._end and not self._fill():
                raise ServerUnreachableError(f"{self.target}: connection closed mid-body")
            start = self._start
            self._start = min(self._end, start + n)
            n -= self._start - start
            yield start, self._start

    def take_buffer(self) -> bytes:
        """Bytes read past the head (e.g. the first WebSocket frames after a 101)."""
        return self._take(self._end - self._start)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


@final
class Response:
    """An answer whose body is read as it arrives. Closing it early closes the connection;
    reading it to the end gives the connection back to the pool."""

    def __init__(
        self, pool: Pool, conn: Connection, status: int, headers: dict[str, str], keep: bool
    ) -> None:
        self.status = status
        self.headers = headers
        self._pool = pool
        self._conn = conn
        self._keep = keep
        self._done = False

    def iter_bytes(self) -> Iterator[bytes]:
        yield from self._body(self._conn.body_chunks(self.headers, self._keep))

    def iter_lines(self) -> Iterator[bytes]:
        """Lines without their newline; a last line without one is yielded too."""
        yield from self._body(self._conn.body_lines(self.headers, self._keep))

    def _body(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from pieces
        except BaseException:
            self.close()
            raise
        self._finish()

    def read(self) -> bytes:
        return b"".join(self.iter_bytes())

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._pool.give_back(self._conn)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@final
class Pool:
    """Idle keep-alive connections to one target. Not shared between threads: give each
    thread its own (the CLI's stdin pump does)."""

    def __init__(self, target: Target, timeout: float | None) -> None:
        self.target = target
        self.timeout = timeout
        self._idle: list[Connection] = []

    def give_back(self, conn: Connection) -> None:
        if not conn.closed:
            self._idle.append(conn)

    def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: Body = None,
        *,
        streaming: bool = False,
    ) -> Response:
        """Send a request and read the head of its answer. `streaming` lifts the read timeout
        once the head has arrived (process output may pause for as long as it likes)."""
        while self._idle:
            conn = self._idle.pop()
            replayable = body is None or isinstance(body, bytes)
            try:
                return self._exchange(conn, method, path, headers, body, streaming)
            except ServerUnreachableError:
                conn.close()
                if not replayable:
                    raise
                # A kept-alive connection that the server closed meanwhile: try a fresh one.
        conn = Connection(self.target, self.timeout)
        try:
            return self._exchange(conn, method, path, headers, body, streaming)
        except BaseException:
            conn.close()
            raise

    def _exchange(
        self,
        conn: Connection,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: Body,
        streaming: bool,
    ) -> Response:
        conn.sock.settimeout(self.timeout)
        conn.send_request(method, path, headers, body)
        status, rheaders, http11 = conn.read_head(method_is_head=method == "HEAD")
        keep = http11 and "close" not in rheaders.get("connection", "").lower()
        if streaming:
            conn.sock.settimeout(None)
        return Response(self, conn, status, rheaders, keep)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
