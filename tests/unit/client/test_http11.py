"""The sync client's HTTP/1.1 transport against a raw socket server that answers exactly the
bytes each test gives: body framings, interim answers, keep-alive and its failure modes."""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from garden.client import http11
from garden.client.http11 import Pool
from garden.client.target import Target
from garden.errors import ServerUnreachableError, UnexpectedResponseError

Handler = Callable[[socket.socket], None]


def read_request(conn: socket.socket) -> bytes:
    """The head of one request, and its body when it has a Content-Length or is chunked."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = conn.recv(65536)
        if not part:
            return data
        data += part
    head, _, rest = data.partition(b"\r\n\r\n")
    lower = head.lower()
    if b"content-length:" in lower:
        n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < n:
            rest += conn.recv(65536)
    elif b"transfer-encoding: chunked" in lower:
        while not rest.endswith(b"0\r\n\r\n"):
            rest += conn.recv(65536)
    return head + b"\r\n\r\n" + rest


@contextmanager
def raw_server(*handlers: Handler) -> Iterator[Target]:
    """Each accepted connection is served by the next handler, then closed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        for handler in handlers:
            conn, _ = listener.accept()
            with conn:
                handler(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        yield Target.parse(f"http://127.0.0.1:{port}")
    finally:
        listener.close()
        thread.join(timeout=5)


def answer(*responses: bytes, record: list[bytes] | None = None) -> Handler:
    """Read a request, send a response, for each response given, on one connection."""

    def handler(conn: socket.socket) -> None:
        for response in responses:
            request = read_request(conn)
            if record is not None:
                record.append(request)
            conn.sendall(response)

    return handler


def test_content_length_chunked_and_until_close() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n"
    )
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    until_close = b"HTTP/1.0 200 OK\r\n\r\nto the end"
    seen: list[bytes] = []
    with raw_server(answer(chunked, sized, until_close, record=seen)) as target:
        pool = Pool(target, timeout=5)
        assert pool.request("GET", "/a", []).read() == b"hello world"
        assert pool.request("GET", "/b", []).read() == b"abc"
        assert pool.request("GET", "/c", []).read() == b"to the end"
    # One connection carried all three: keep-alive worked until HTTP/1.0 ended it.
    assert [r.split(b" ")[1] for r in seen] == [b"/a", b"/b", b"/c"]
    assert b"Host: 127.0.0.1:" in seen[0]


def test_interim_answers_are_skipped_and_lines_split() -> None:
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\none\ntwo\nend"
    )
    with raw_server(answer(response)) as target:
        resp = Pool(target, timeout=5).request("POST", "/x", [], b"{}")
        assert resp.status == 200
        assert list(resp.iter_lines()) == [b"one", b"two", b"end"]


def _chunked(body: bytes, cuts: list[int]) -> bytes:
    bounds = [0, *cuts, len(body)]
    return b"".join(
        b"%x\r\n" % (b - a) + body[a:b] + b"\r\n" for a, b in itertools.pairwise(bounds)
    )


def test_lines_exact_across_chunks_and_a_growing_buffer() -> None:
    # A line longer than the receive buffer (it grows), lines split across chunks anywhere,
    # several in one chunk, then the same body with a Content-Length; then the connection is
    # reused, so the buffer's bookkeeping ended where the body did.
    big = bytes(range(256)).replace(b"\n", b"") * (3 * http11.BUFFER_SIZE // 255)
    body = b"a\n" + big + b"\nbb\nccc\n" + b"d" * 5000 + b"\n" + b"tail"
    cuts = [1, 3, 10, len(big) // 2, len(big) + 3, len(big) + 12]
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(body, cuts)
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    ping = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    seen: list[bytes] = []
    with raw_server(answer(chunked + b"0\r\n\r\n", sized, ping, record=seen)) as target:
        pool = Pool(target, timeout=5)
        assert list(pool.request("GET", "/a", []).iter_lines()) == body.split(b"\n")
        assert list(pool.request("GET", "/b", []).iter_lines()) == body.split(b"\n")
        assert pool.request("GET", "/c", []).read() == b"ok"
    assert len(seen) == 3  # one connection


def test_a_stale_kept_alive_connection_is_retried_once() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with raw_server(answer(ok), answer(ok)) as target:
        pool = Pool(target, timeout=5)
        assert pool.request("GET", "/1", []).read() == b"ok"
        # The server closed the first connection after one answer; the pool notices on
        # the next request and sends it again on a fresh connection.
        assert pool.request("GET", "/2", []).read() == b"ok"


def test_a_streamed_body_is_never_sent_twice() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with raw_server(answer(ok)) as target:
        pool = Pool(target, timeout=5)
        assert pool.request("GET", "/1", []).read() == b"ok"
        with pytest.raises(ServerUnreachableError):
            pool.request("PUT", "/2", [], iter([b"once"]))


def test_an_early_error_answer_during_an_upload_is_read() -> None:
    def refuse(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: close\r\n\r\ngone"
        )
        conn.shutdown(socket.SHUT_RDWR)

    def forever() -> Iterator[bytes]:
        for _ in range(10_000):
            yield b"x" * 65536

    with raw_server(refuse) as target:
        resp = Pool(target, timeout=5).request("PUT", "/f", [], forever())
        assert (resp.status, resp.read()) == (404, b"gone")


def test_garbage_and_silence() -> None:
    def garbage(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    def hang_up(conn: socket.socket) -> None:
        read_request(conn)

    with raw_server(garbage, hang_up) as target:
        with pytest.raises(UnexpectedResponseError):
            Pool(target, timeout=5).request("GET", "/", [])
        with pytest.raises(ServerUnreachableError, match="closed before an answer"):
            Pool(target, timeout=5).request("GET", "/", [])


def test_cut_chunked_body() -> None:
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort"
    with raw_server(answer(cut)) as target:
        resp = Pool(target, timeout=5).request("GET", "/", [])
        with pytest.raises(ServerUnreachableError, match="mid-body"):
            resp.read()


def test_timeout() -> None:
    def silent(conn: socket.socket) -> None:
        read_request(conn)
        conn.recv(1)  # until the client gives up

    with raw_server(silent) as target, pytest.raises(ServerUnreachableError, match="no answer"):
        Pool(target, timeout=0.2).request("GET", "/", [])
