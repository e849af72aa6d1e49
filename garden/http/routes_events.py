"""`GET /events?since=SEQ&follow=true`: the event log as NDJSON, for auditing. Optional
`handle` and `type` filters (repeatable). Without `follow` the stream ends at the record that
was last when the request arrived."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from garden.actors.supervisor import Supervisor
from garden.errors import InvalidRequestError
from garden.events.schema import Record

_encode = msgspec.json.Encoder().encode


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer") from None
    if value < 0:
        raise InvalidRequestError(f"{name} must be >= 0")
    return value


def _matches(record: Record, handles: set[str], types: set[str]) -> bool:
    if types and type(record.event).__name__ not in types:
        return False
    return not handles or getattr(record.event, "handle", None) in handles


def register(app: QuartTrio, sup: Supervisor) -> None:
    @app.get("/events")
    async def events() -> Response:
        since = _int_arg("since", 0)
        follow = request.args.get("follow", "false").lower() in ("1", "true", "yes")
        handles = set(request.args.getlist("handle"))
        types = set(request.args.getlist("type"))
        upto = sup.journal.last_seq

        async def body() -> AsyncIterator[bytes]:
            if not follow and since >= upto:
                return
            async for record in sup.journal.subscribe(since):
                if _matches(record, handles, types):
                    yield _encode(record) + b"\n"
                if not follow and record.seq >= upto:
                    return

        return Response(body(), content_type="application/x-ndjson")
