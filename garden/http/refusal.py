"""Answering a request with an error before the app sees it, from an ASGI layer in front of
Quart (the token check, the request-head bounds): an HTTP response in API.md's error shape, or
for a WebSocket the same as a denial response where hypercorn offers one, else a close."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from garden.api import encode
from garden.errors import GardenError
from garden.http.errors import body_of, status_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    error: GardenError,
    *,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    close_code: int,
) -> None:
    """Answer `error` (its status and body) with `headers` added; a WebSocket without the
    denial-response extension is closed with `close_code`."""
    body = encode(body_of(error))
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    status = status_of(error)
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})
        return
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": head})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": close_code})
