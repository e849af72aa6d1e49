"""Small helpers every route uses: JSON answers, error answers, and the request's origin."""

from __future__ import annotations

from typing import TypeVar

from quart import Response, g, request

from garden import errors as e
from garden.api import decode_request, encode
from garden.events.schema import Origin
from garden.http.errors import body_of, classify, status_of

T = TypeVar("T")


def json_response(obj: object, status: int = 200) -> Response:
    return Response(encode(obj), status=status, content_type="application/json")


def error_response(error: e.GardenError) -> Response:
    error = classify(error)
    return json_response(body_of(error), status_of(error))


def origin() -> Origin:
    """Who is asking: the request id and the client's address, for the event log."""
    return Origin(request_id=g.request_id, client=request.remote_addr or "")


async def read_json(kind: type[T]) -> T:
    """Decode the request's JSON body as `kind` (an empty body is `{}`); bad input is a 400."""
    data = await request.get_data(as_text=False)
    return decode_request(data if isinstance(data, bytes) else data.encode(), kind)
