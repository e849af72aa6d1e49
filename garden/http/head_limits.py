"""The request head's bounds (`garden.bounds`: the URL and the headers, their number and their
size together), checked before any route or the token check: a 400 `InvalidRequestError` in
API.md's error shape. hypercorn bounds a head that is still arriving; a head that arrives
whole in one read is checked here."""

from __future__ import annotations

from garden import bounds
from garden.errors import InvalidRequestError
from garden.http.refusal import ASGIApp, Receive, Scope, Send, refuse


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
        await refuse(
            scope,
            receive,
            send,
            InvalidRequestError(problem),
            headers=((b"connection", b"close"),),
            close_code=1009,
        )

    return bounded
