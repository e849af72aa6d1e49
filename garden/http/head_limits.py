"""The request head's bounds (`garden.bounds`: the URL and the headers, their number and their
size together), checked before any route or the token check: a 400 `InvalidRequestError` in
API.md's error shape. hypercorn bounds a head that is still arriving; a head that arrives
whole in one read is checked here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from garden import bounds
from garden.api import encode
from garden.errors import InvalidRequestError
from garden.http.errors import body_of, status_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def head_problem(scope: Scope) -> str | None:
    """Why the request head is over the bounds, or None."""
    headers = scope.get("headers", ())
    if len(headers) > bounds.MAX_HEADERS:
        return f"more than {bounds.MAX_HEADERS} request headers"
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    size += sum(len(name) + len(value) for name, value in headers)
    if size > bounds.MAX_HEADER_BYTES:
        return f"the URL and headers are larger than {bounds.MAX_HEADER_BYTES} bytes"
    return None


def limit_heads(app: ASGIApp) -> ASGIApp:
    async def bounded(scope: Scope, receive: Receive, send: Send) -> None:
        problem = head_problem(scope) if scope["type"] in ("http", "websocket") else None
        if problem is None:
            await app(scope, receive, send)
            return
        error = InvalidRequestError(problem)
        body = encode(body_of(error))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        status = status_of(error)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if (await receive())["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            start = {"type": "websocket.http.response.start", "status": status, "headers": headers}
            await send(start)
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1009})

    return bounded
