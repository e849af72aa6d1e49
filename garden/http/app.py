"""The Quart-Trio application: configuration, request ids, error bodies, one log line per
request, and the ASGI wrapper that fixes connection close under hypercorn's trio worker."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from garden import errors as e
from garden.actors.supervisor import Supervisor
from garden.http import (
    routes,
    routes_events,
    routes_files,
    routes_images,
    routes_limits,
    routes_metrics,
    routes_net,
    routes_openapi,
    routes_processes,
    routes_terminal,
)
from garden.http.respond import error_response, json_response

log = logging.getLogger("garden.http")

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
# QuartTrio's own signature is narrower (typed scopes and events); the wrapper passes them on.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def create_app(supervisor: Supervisor) -> QuartTrio:
    app = QuartTrio("garden")
    app.config.update(
        # JSON bodies; uploads and stdin read their raw bodies and are not bounded by this.
        MAX_CONTENT_LENGTH=supervisor.config.max_body_bytes,
        BODY_TIMEOUT=None,
        RESPONSE_TIMEOUT=None,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.extensions["supervisor"] = supervisor

    @app.before_request
    async def _start() -> None:
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if REQUEST_ID_RE.fullmatch(given) else secrets.token_hex(8)
        g.started = time.perf_counter()

    @app.after_request
    async def _finish(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        started = g.get("started")
        took = (time.perf_counter() - started) * 1000 if started else 0.0
        fields = {
            "method": request.method,
            "route": request.url_rule.rule if request.url_rule else "-",
            "path": request.path,
            "status": response.status_code,
            "ms": round(took, 1),
            "handle": (request.view_args or {}).get("handle") or g.get("handle", "") or "-",
            "request_id": g.get("request_id", ""),
        }
        log.info(
            "request " + " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields}
        )
        return response

    @app.errorhandler(e.GardenError)
    async def _garden_error(error: e.GardenError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        if error.code == 404:
            return error_response(e.RouteNotFoundError(f"no route for {request.path}"))
        if error.code == 405:
            return error_response(
                e.MethodNotAllowedError(f"{request.method} is not allowed on {request.path}")
            )
        if error.code == 413:
            limit = supervisor.config.max_body_bytes
            return error_response(
                e.PayloadTooLargeError(f"request body is larger than {limit} bytes")
            )
        return json_response(
            {
                "type": "HTTPError",
                "message": str(error.description),
                "handle": "",
                "process_id": "",
            },
            error.code or 500,
        )

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        exhausted = e.exhaustion_of(error)
        if exhausted is not None:
            log.warning("exhausted request_id=%s: %s", g.get("request_id", ""), exhausted.message)
            return error_response(exhausted)
        correlation = g.get("request_id", "") or secrets.token_hex(8)
        log.error("internal-error request_id=%s", correlation, exc_info=error)
        return error_response(
            e.InternalError(f"internal error (request id {correlation}): {type(error).__name__}")
        )

    routes.register(app, supervisor)
    routes_processes.register(app, supervisor)
    routes_terminal.register(app, supervisor)
    routes_events.register(app, supervisor)
    routes_net.register(app, supervisor)
    routes_limits.register(app, supervisor)
    routes_metrics.register(app, supervisor)
    routes_files.register(app, supervisor)
    routes_openapi.register(app, supervisor)
    routes_images.register(app, supervisor)
    return app


def asgi_with_close_fix(app: ASGIApp) -> ASGIApp:
    """Shield only the final body send of each response, so that hypercorn's trio worker can
    close `Connection: close` and HTTP/1.0 connections (DESIGN.md; hypercorn#330)."""

    async def wrapped(
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        async def send_shielding_last(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await app(scope, receive, send_shielding_last)

    return wrapped
