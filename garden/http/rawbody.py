"""Request bodies read straight from ASGI `receive`, with backpressure, for routes that take
large uploads.

Quart buffers a request body in memory as fast as the client sends it (DESIGN.md). For the
routes chosen here, the app's ASGI entry hands Quart an empty body instead and keeps the real
`receive` in the request's scope; the route reads it with `RawBody.chunks()` at its own pace,
and hypercorn stops reading the socket while its small queue is full. Routing, hooks, error
handlers and logging stay Quart's.

A route must let `RawBody.drained()` wrap its work: whatever the route did not read is read and
dropped before the answer goes out, so a client still sending (an error answered before the end
of its body) gets the answer instead of a reset connection.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final, final

import trio
from quart import request
from quart_trio import QuartTrio

from garden.errors import InternalError

log = logging.getLogger("garden.http")

SCOPE_KEY: Final = "garden.raw_body"
DRAIN_TIMEOUT: Final = 60.0  # give up on a client that keeps sending after its answer is ready

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


class ClientDisconnected(Exception):
    """The client went away before the end of its request body."""


@final
class RawBody:
    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._given_to_quart = False
        self.complete = False
        self.disconnected = False
        self.bytes_read = 0

    async def for_quart(self) -> Message:
        """The `receive` Quart gets: an empty body, then nothing until Quart stops listening
        (it does once the response is sent)."""
        if not self._given_to_quart:
            self._given_to_quart = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body; None at its end; `ClientDisconnected` if it never ends."""
        while not self.complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.complete = self.disconnected = True
                raise ClientDisconnected("the client went away during the request body")
            if message["type"] == "http.request":
                self.complete = not message.get("more_body", False)
                chunk: bytes = message.get("body", b"")
                if chunk:
                    self.bytes_read += len(chunk)
                    return chunk
        return None

    def chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self)

    @asynccontextmanager
    async def drained(self) -> AsyncIterator[RawBody]:
        """Read and drop what is left of the body when the block ends (either way)."""
        try:
            yield self
        finally:
            if not self.complete:
                with trio.move_on_after(DRAIN_TIMEOUT) as scope:
                    try:
                        while await self.next_chunk() is not None:
                            pass
                    except ClientDisconnected:
                        pass
                if scope.cancelled_caught:
                    log.warning("body-drain-timed-out bytes=%d", self.bytes_read)


@final
class _Chunks:
    """An async iterator over the body (a class, not an async generator: nothing to finalize
    when its reader stops early)."""

    def __init__(self, body: RawBody) -> None:
        self._body = body

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._body.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


def current() -> RawBody:
    """The raw body of the request being handled (only on routes given to `stream_bodies`)."""
    body = request.scope.get(SCOPE_KEY)
    if not isinstance(body, RawBody):
        raise InternalError(f"{request.method} {request.path} has no raw body")
    return body


def stream_bodies(app: QuartTrio, wanted: Callable[[str, str], bool]) -> None:
    """Requests for which `wanted(method, path)` holds get a `RawBody` instead of Quart's."""
    inner = app.asgi_app

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and wanted(scope["method"], scope["path"]):
            body = RawBody(receive)
            scope[SCOPE_KEY] = body
            receive = body.for_quart
        await inner(scope, receive, send)

    app.asgi_app = asgi_app  # type: ignore[method-assign]
