"""Every route of API.md as a `Call`: method, path, query, body and how to decode the answer.

No I/O here: `garden.client.sync` and `garden.client.aio` send the same calls over their own
transports, so the two clients cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar, final

import msgspec

from garden.api import (
    LIMIT_KINDS,
    BulkInfoEntry,
    BulkMetricsEntry,
    Capacity,
    ContainerInfo,
    ContainerMetrics,
    ContainerSpec,
    GraceTime,
    HandleReply,
    HandlesReply,
    NetInRequest,
    NetOutRule,
    PortMapping,
    ProcessSpec,
    PropertyValue,
    SignalRequest,
    StopRequest,
    Wire,
)
from garden.images.wire import ImagesReply, ImportLine, ImportRequest, PruneReply

T = TypeVar("T")
L = TypeVar("L", bound=Wire)

JSON = "application/json"
NDJSON = "application/x-ndjson"
OCTETS = "application/octet-stream"
TAR = "application/x-tar"

_encoder = msgspec.json.Encoder()
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def quote(part: str) -> str:
    """Percent-encode one path segment or query value (RFC 3986 unreserved stays)."""
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in part.encode())


def query_string(pairs: Iterable[tuple[str, str]]) -> str:
    text = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
    return f"?{text}" if text else ""


@final
class Call(Generic[T]):
    """One request and the decoder of its successful answer."""

    __slots__ = ("body", "content_type", "decode", "method", "path")

    def __init__(
        self,
        method: str,
        path: str,
        decode: Callable[[bytes], T],
        *,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.decode = decode
        self.body = body
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"Call({self.method} {self.path})"


def _json(kind: type[T]) -> Callable[[bytes], T]:
    decoder = msgspec.json.Decoder(kind)
    return decoder.decode


def _empty(content: bytes) -> None:
    return None


def _with_json(method: str, path: str, body: object, decode: Callable[[bytes], T]) -> Call[T]:
    return Call(method, path, decode, body=_encoder.encode(body), content_type=JSON)


def container_path(handle: str, *rest: str) -> str:
    return "/".join(["/containers", quote(handle), *(quote(r) for r in rest)])


def process_path(handle: str, process_id: str, *rest: str) -> str:
    return container_path(handle, "processes", process_id, *rest)


_decode_handles = _json(HandlesReply)
_decode_handle = _json(HandleReply)
_decode_property = _json(PropertyValue)


def ping() -> Call[None]:
    return Call("GET", "/ping", _empty)


def capacity() -> Call[Capacity]:
    return Call("GET", "/capacity", _json(Capacity))


def handles(properties: Mapping[str, str] | None = None) -> Call[list[str]]:
    query = query_string((properties or {}).items())
    return Call("GET", f"/containers{query}", lambda b: _decode_handles(b).handles)


def create(spec: ContainerSpec) -> Call[str]:
    return _with_json("POST", "/containers", spec, lambda b: _decode_handle(b).handle)


def info(handle: str) -> Call[ContainerInfo]:
    return Call("GET", container_path(handle, "info"), _json(ContainerInfo))


def bulk_info(handles: Iterable[str]) -> Call[dict[str, BulkInfoEntry]]:
    query = query_string([("handles", ",".join(handles))])
    return Call("GET", f"/containers/bulk_info{query}", _json(dict[str, BulkInfoEntry]))


def bulk_metrics(handles: Iterable[str]) -> Call[dict[str, BulkMetricsEntry]]:
    query = query_string([("handles", ",".join(handles))])
    return Call("GET", f"/containers/bulk_metrics{query}", _json(dict[str, BulkMetricsEntry]))


def metrics(handle: str) -> Call[ContainerMetrics]:
    return Call("GET", container_path(handle, "metrics"), _json(ContainerMetrics))


def destroy(handle: str) -> Call[None]:
    return Call("DELETE", container_path(handle), _empty)


def stop(handle: str, kill: bool = False) -> Call[None]:
    return _with_json("PUT", container_path(handle, "stop"), StopRequest(kill=kill), _empty)


def properties(handle: str) -> Call[dict[str, str]]:
    return Call("GET", container_path(handle, "properties"), _json(dict[str, str]))


def get_property(handle: str, key: str) -> Call[str]:
    path = container_path(handle, "properties", key)
    return Call("GET", path, lambda b: _decode_property(b).value)


def set_property(handle: str, key: str, value: str) -> Call[None]:
    path = container_path(handle, "properties", key)
    return _with_json("PUT", path, PropertyValue(value=value), _empty)


def delete_property(handle: str, key: str) -> Call[None]:
    return Call("DELETE", container_path(handle, "properties", key), _empty)


def set_grace_time(handle: str, seconds: float) -> Call[None]:
    path = container_path(handle, "grace_time")
    return _with_json("PUT", path, GraceTime(grace_time=seconds), _empty)


def limit_kind(kind: type[Wire]) -> str:
    for name, cls in LIMIT_KINDS.items():
        if cls is kind:
            return name
    raise TypeError(f"{kind.__name__} is not a limit type; known: {', '.join(LIMIT_KINDS)}")


def get_limit(handle: str, kind: type[L]) -> Call[L]:
    return Call("GET", container_path(handle, "limits", limit_kind(kind)), _json(kind))


def set_limit(handle: str, limit: L) -> Call[L]:
    kind = type(limit)
    return _with_json("PUT", container_path(handle, "limits", limit_kind(kind)), limit, _json(kind))


def net_in(handle: str, host_port: int = 0, container_port: int = 0) -> Call[PortMapping]:
    body = NetInRequest(host_port=host_port, container_port=container_port)
    return _with_json("POST", container_path(handle, "net", "in"), body, _json(PortMapping))


def net_out(handle: str, rule: NetOutRule) -> Call[None]:
    return _with_json("POST", container_path(handle, "net", "out"), rule, _empty)


def signal(handle: str, process_id: str, signal: str | int) -> Call[None]:
    path = process_path(handle, process_id, "signal")
    return _with_json("POST", path, SignalRequest(signal=signal), _empty)


def server_metrics() -> Call[str]:
    return Call("GET", "/metrics", lambda b: b.decode())


def openapi() -> Call[dict[str, Any]]:
    return Call("GET", "/openapi.json", _json(dict[str, Any]))


# --- requests whose bodies or answers stream: the clients send these themselves ---


def run_path(handle: str, base64: bool) -> str:
    return container_path(handle, "processes") + ("?encoding=base64" if base64 else "")


def run_body(spec: ProcessSpec) -> bytes:
    return _encoder.encode(spec)


def attach_path(handle: str, process_id: str, base64: bool) -> str:
    return process_path(handle, process_id) + ("?encoding=base64" if base64 else "")


def stdin_path(handle: str, process_id: str) -> str:
    return process_path(handle, process_id, "stdin")


def terminal_path(handle: str, process_id: str) -> str:
    return process_path(handle, process_id, "ws")


def files_path(handle: str, *, destination: str = "", source: str = "") -> str:
    pairs = [("destination", destination)] if destination else [("source", source)]
    return container_path(handle, "files") + query_string(pairs)


def events_path(since: int, follow: bool) -> str:
    pairs = [("since", str(since))] + ([("follow", "true")] if follow else [])
    return "/events" + query_string(pairs)


# --- images (docs/images.md) ---


def images() -> Call[ImagesReply]:
    return Call("GET", "/images", _json(ImagesReply))


def prune_images() -> Call[PruneReply]:
    return Call("POST", "/images/prune", _json(PruneReply))


def import_image_body(rootfs: str) -> bytes:
    """The body of `POST /images`, whose answer streams `ImportLine`s (NDJSON)."""
    return _encoder.encode(ImportRequest(rootfs=rootfs))


decode_import_line = _json(ImportLine)
