"""Turn an error answer back into the `garden.errors` class its wire `type` names.

`ContainerNotFoundError` on the wire becomes `garden.errors.ContainerNotFoundError` with the
server's message, handle and process id. An unknown `type` (a newer server) or a body that is
not an error object becomes `UnexpectedResponseError` carrying the HTTP status.
"""

from __future__ import annotations

import msgspec

from garden import errors as e
from garden.api import ErrorBody

_error_decoder = msgspec.json.Decoder(ErrorBody)


def _classes() -> dict[str, type[e.GardenError]]:
    """Every `GardenError` subclass by its wire `type`; a class that only inherits its
    parent's `kind` (the `KernelError`s) does not claim it, nor does the base class."""
    out: dict[str, type[e.GardenError]] = {}
    todo: list[type[e.GardenError]] = list(e.GardenError.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "kind" in cls.__dict__:
            out.setdefault(cls.kind, cls)
    return out


_BY_KIND: dict[str, type[e.GardenError]] | None = None


def error_class(kind: str) -> type[e.GardenError] | None:
    global _BY_KIND
    if _BY_KIND is None:
        _BY_KIND = _classes()
    return _BY_KIND.get(kind)


def from_body(body: ErrorBody, status: int = 0) -> e.GardenError:
    """The exception a wire error body stands for."""
    cls = error_class(body.type)
    if cls is None:
        return e.UnexpectedResponseError(
            f"{body.type}: {body.message}", status=status, handle=body.handle
        )
    # Bypass the subclasses' own constructors (ContainerNotFoundError(handle), ...): the
    # server's message is the one to show.
    exc = cls.__new__(cls)
    e.GardenError.__init__(exc, body.message, handle=body.handle, process_id=body.process_id)
    return exc


def from_response(status: int, content: bytes) -> e.GardenError:
    """The exception for an answer with an error status."""
    try:
        body = _error_decoder.decode(content)
    except msgspec.DecodeError:
        snippet = content[:200].decode("utf-8", "replace").strip()
        if status == 401:  # a proxy in front that checks the bearer token (docs/security.md)
            return e.UnauthorizedError(f"HTTP 401: the token was refused: {snippet or '(empty)'}")
        return e.UnexpectedResponseError(
            f"HTTP {status} without a Garden error body: {snippet or '(empty)'}", status=status
        )
    return from_body(body, status)
