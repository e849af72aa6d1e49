"""The OpenAPI 3.1 document of the API (`GET /openapi.json`), built from the route table below
and the msgspec wire types of `garden.api` (their JSON Schemas come from
`msgspec.json.schema_components`). tests/unit/test_openapi.py checks the table against the
routes the server really has, so the two cannot drift apart unnoticed.

No HTTP framework here: the document is plain data, built once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from garden import __version__
from garden.api import (
    BandwidthLimits,
    BulkInfoEntry,
    BulkMetricsEntry,
    Capacity,
    ContainerInfo,
    ContainerMetrics,
    ContainerSpec,
    CpuLimits,
    DiskLimits,
    Empty,
    ErrorBody,
    ExitStatus,
    GraceTime,
    HandleReply,
    HandlesReply,
    MemoryLimits,
    NetInRequest,
    NetOutRule,
    PidLimits,
    PortMapping,
    ProcessPayload,
    ProcessSpec,
    PropertyValue,
    ResizeRequest,
    SignalRequest,
    StopRequest,
)
from garden.events.schema import Record
from garden.images.wire import ImagesReply, ImportLine, ImportRequest, PruneReply

JSON = "application/json"
NDJSON = "application/x-ndjson"
OCTETS = "application/octet-stream"
TAR = "application/x-tar"
TEXT = "text/plain"


class Param(NamedTuple):
    name: str
    where: str  # "query" or "path"
    description: str
    required: bool = False
    schema: dict[str, Any] = {"type": "string"}  # never mutated


class Body(NamedTuple):
    """A request or answer body: a wire type (JSON) or raw bytes of a media type."""

    media: str
    type: object = None  # a msgspec-describable type, or None for raw bytes
    description: str = ""


class Route(NamedTuple):
    method: str
    path: str  # OpenAPI form: /containers/{handle}/info
    summary: str
    tag: str
    cli: str  # the `garden` command that does the same
    request: Body | None = None
    response: Body = Body(JSON, Empty)
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    status: int = 200


HANDLE = Param("handle", "path", "the container's handle", True)
PROCESS_ID = Param("process_id", "path", "the process id", True)
KEY = Param("key", "path", "the property's name", True)
FILE_USER = Param(
    "user",
    "query",
    "the container's user (default root): owns what is written; relative paths start at its home",
    False,
)
ENCODING = Param(
    "encoding",
    "query",
    "`base64`: `data` is base64 of the exact bytes; otherwise UTF-8 text",
    schema={"type": "string", "enum": ["base64"]},
)
C = "/containers/{handle}"
P = C + "/processes/{process_id}"
NOT_FOUND = (404,)
IN_CONTAINER = (400, 404, 409)

LIMITS: dict[str, tuple[type[msgspec.Struct], str]] = {
    "memory": (MemoryLimits, "64M"),
    "cpu": (CpuLimits, "512"),
    "disk": (DiskLimits, "1G"),
    "bandwidth": (BandwidthLimits, "rate=1M burst=64K"),
    "pids": (PidLimits, "max=100"),
}


def _limit_routes() -> list[Route]:
    out: list[Route] = []
    for kind, (cls, example) in LIMITS.items():
        path = f"{C}/limits/{kind}"
        out.append(
            Route(
                "GET",
                path,
                f"the {kind} limit in force",
                "limits",
                f"garden limit HANDLE {kind}",
                response=Body(JSON, cls),
                params=(HANDLE,),
                errors=NOT_FOUND,
            )
        )
        out.append(
            Route(
                "PUT",
                path,
                f"change the {kind} limit; answers the limit in force afterwards",
                "limits",
                f"garden limit HANDLE {kind} {example}",
                request=Body(JSON, cls),
                response=Body(JSON, cls),
                params=(HANDLE,),
                errors=(400, 404, 409),
            )
        )
    return out


ROUTES: tuple[Route, ...] = (
    Route("GET", "/ping", "is the server up", "server", "garden ping"),
    Route(
        "GET",
        "/capacity",
        "machine memory, free disk of the state dir, containers that can still be created",
        "server",
        "garden capacity",
        response=Body(JSON, Capacity),
    ),
    Route(
        "GET",
        "/containers",
        "handles of the containers whose properties match every query pair",
        "containers",
        "garden list [-p KEY=VALUE ...]",
        response=Body(JSON, HandlesReply),
        params=(
            Param(
                "properties",
                "query",
                "each `key=value` pair is a property filter; all must match",
                schema={"type": "object", "additionalProperties": {"type": "string"}},
            ),
        ),
    ),
    Route(
        "POST",
        "/containers",
        "create a container",
        "containers",
        "garden create [--handle H] [--rootfs DIR] ...",
        request=Body(JSON, ContainerSpec),
        response=Body(JSON, HandleReply),
        errors=(400, 403, 404, 409, 502, 503, 507),
    ),
    Route(
        "GET",
        "/containers/bulk_info",
        "the info of several containers; an unknown handle gets an `error` entry",
        "containers",
        "garden info H1 H2 ...",
        response=Body(JSON, dict[str, BulkInfoEntry]),
        params=(Param("handles", "query", "comma-separated handles", True),),
    ),
    Route(
        "GET",
        "/containers/bulk_metrics",
        "the metrics of several containers; an unknown handle gets an `error` entry",
        "containers",
        "garden metrics H1 H2 ...",
        response=Body(JSON, dict[str, BulkMetricsEntry]),
        params=(Param("handles", "query", "comma-separated handles", True),),
    ),
    Route(
        "GET",
        C + "/info",
        "state, addresses, processes, properties, ports and kernel statistics",
        "containers",
        "garden info HANDLE",
        response=Body(JSON, ContainerInfo),
        params=(HANDLE,),
        errors=NOT_FOUND,
    ),
    Route(
        "GET",
        C + "/metrics",
        "the kernel statistics of info",
        "containers",
        "garden metrics HANDLE",
        response=Body(JSON, ContainerMetrics),
        params=(HANDLE,),
        errors=NOT_FOUND,
    ),
    Route(
        "DELETE",
        C,
        "destroy a container: kill every process, release everything it holds",
        "containers",
        "garden destroy HANDLE",
        params=(HANDLE,),
        errors=NOT_FOUND,
    ),
    Route(
        "PUT",
        C + "/stop",
        "stop every process (TERM, then KILL after the stop timeout; `kill`: KILL at once)",
        "containers",
        "garden stop [--kill] HANDLE",
        request=Body(JSON, StopRequest),
        params=(HANDLE,),
        errors=NOT_FOUND,
    ),
    Route(
        "PUT",
        C + "/grace_time",
        "change how long the container may stay untouched before it is destroyed",
        "containers",
        "garden grace-time HANDLE 5m",
        request=Body(JSON, GraceTime),
        params=(HANDLE,),
        errors=(400, 404),
    ),
    Route(
        "GET",
        C + "/properties",
        "every property",
        "properties",
        "garden property get HANDLE",
        response=Body(JSON, dict[str, str]),
        params=(HANDLE,),
        errors=NOT_FOUND,
    ),
    Route(
        "GET",
        C + "/properties/{key}",
        "one property",
        "properties",
        "garden property get HANDLE KEY",
        response=Body(JSON, PropertyValue),
        params=(HANDLE, KEY),
        errors=NOT_FOUND,
    ),
    Route(
        "PUT",
        C + "/properties/{key}",
        "set a property",
        "properties",
        "garden property set HANDLE KEY VALUE",
        request=Body(JSON, PropertyValue),
        params=(HANDLE, KEY),
        errors=(400, 404),
    ),
    Route(
        "DELETE",
        C + "/properties/{key}",
        "remove a property",
        "properties",
        "garden property rm HANDLE KEY",
        params=(HANDLE, KEY),
        errors=NOT_FOUND,
    ),
    Route(
        "PUT",
        C + "/files",
        "write a file (the body), or with `Content-Type: application/x-tar` unpack a tar into "
        "the directory `destination`",
        "files",
        "garden stream-in HANDLE --destination PATH [FILE|DIR|-]",
        request=Body(OCTETS, None, "the file's bytes, or a tar (application/x-tar)"),
        params=(HANDLE, Param("destination", "query", "path in the container", True), FILE_USER),
        errors=(400, 404, 409, 507),
    ),
    Route(
        "GET",
        C + "/files",
        "a file's bytes, or a tar (application/x-tar) of a directory",
        "files",
        "garden stream-out HANDLE --source PATH [DEST|-]",
        response=Body(OCTETS, None, "the file's bytes, or a tar of the directory"),
        params=(HANDLE, Param("source", "query", "path in the container", True), FILE_USER),
        errors=(400, 404),
    ),
    Route(
        "POST",
        C + "/processes",
        "start a process and stream its output: the id first, then output, the exit status last",
        "processes",
        "garden run HANDLE -- CMD ARGS...",
        request=Body(JSON, ProcessSpec),
        response=Body(NDJSON, ProcessPayload, "one ProcessPayload per line"),
        params=(HANDLE, ENCODING),
        errors=(400, 404, 409),
    ),
    Route(
        "GET",
        P,
        "attach: the output kept since the process started, then live, then the exit status",
        "processes",
        "garden attach HANDLE PROCESS_ID",
        response=Body(NDJSON, ProcessPayload, "one ProcessPayload per line"),
        params=(HANDLE, PROCESS_ID, ENCODING),
        errors=NOT_FOUND,
    ),
    Route(
        "PUT",
        P + "/stdin",
        "stream the body to the process's stdin; the end of the body closes it",
        "processes",
        "garden run -i HANDLE -- CMD / garden attach -i HANDLE PROCESS_ID",
        request=Body(OCTETS, None, "bytes for the process's stdin"),
        params=(HANDLE, PROCESS_ID),
        errors=IN_CONTAINER,
    ),
    Route(
        "POST",
        P + "/signal",
        "send a signal (a name such as TERM or a number)",
        "processes",
        "garden signal HANDLE PROCESS_ID [SIGNAL]",
        request=Body(JSON, SignalRequest),
        params=(HANDLE, PROCESS_ID),
        errors=IN_CONTAINER,
    ),
    Route(
        "GET",
        P + "/ws",
        "WebSocket terminal: binary frames carry input and output; text frames carry "
        "ResizeRequest and SignalRequest from the client and ExitStatus from the server",
        "processes",
        "garden run -it HANDLE -- sh",
        response=Body(JSON, ExitStatus, "the last text frame before the server closes"),
        params=(HANDLE, PROCESS_ID),
        errors=NOT_FOUND,
        status=101,
    ),
    *_limit_routes(),
    Route(
        "POST",
        C + "/net/in",
        "forward a host port to a container port (0 or absent: chosen by the server)",
        "network",
        "garden net-in HANDLE [--host-port N] [--container-port N]",
        request=Body(JSON, NetInRequest),
        response=Body(JSON, PortMapping),
        params=(HANDLE,),
        errors=(400, 404, 409, 503),
    ),
    Route(
        "POST",
        C + "/net/out",
        "allow traffic to a network that --deny-network closes",
        "network",
        "garden net-out HANDLE --network CIDR [--port N] [--protocol tcp]",
        request=Body(JSON, NetOutRule),
        params=(HANDLE,),
        errors=(400, 404),
    ),
    Route(
        "GET",
        "/events",
        "the event log as NDJSON (one Record per line), for auditing",
        "server",
        "garden events [--since SEQ] [--follow]",
        response=Body(NDJSON, Record, "one Record per line"),
        params=(
            Param(
                "since", "query", "records after this sequence number", schema={"type": "integer"}
            ),
            Param("follow", "query", "then wait for new records", schema={"type": "boolean"}),
            Param("handle", "query", "only records of this container (repeatable)"),
            Param("type", "query", "only records of this event type (repeatable)"),
        ),
        errors=(400,),
    ),
    Route(
        "GET",
        "/metrics",
        "server metrics in the Prometheus text format",
        "server",
        "curl $GARDEN_TARGET/metrics",
        response=Body(TEXT, None, "Prometheus exposition format"),
    ),
    Route(
        "GET",
        "/openapi.json",
        "this document",
        "server",
        "curl $GARDEN_TARGET/openapi.json",
        response=Body(JSON, None, "an OpenAPI 3.1 document"),
    ),
    Route(
        "GET",
        "/images",
        "the images and layers in the image store, with sizes and use counts",
        "images",
        "garden images",
        response=Body(JSON, ImagesReply),
    ),
    Route(
        "POST",
        "/images",
        "import an image into the store (NDJSON progress lines, then the image)",
        "images",
        "garden images import URI",
        request=Body(JSON, ImportRequest),
        response=Body(NDJSON, ImportLine, "progress lines, then {image} or {error}"),
        errors=(400, 404, 502),
    ),
    Route(
        "POST",
        "/images/prune",
        "remove every image and layer that no container uses",
        "images",
        "garden images prune",
        response=Body(JSON, PruneReply),
    ),
)

STATUS_TEXT = {
    400: "bad request (InvalidRequestError)",
    401: "missing or wrong bearer token (UnauthorizedError)",
    403: "not allowed (PrivilegedContainersDisallowedError)",
    404: "unknown container, process, property, file, executable or image",
    409: "conflicts with the current state (in use, stopped, overlapping)",
    413: "body over a configured limit (PayloadTooLargeError)",
    502: "an image registry unreachable, silent or failing (RegistryError, with its error)",
    503: "capacity exhausted (CapacityExhaustedError), or the server is out of file descriptors"
    " or shutting down (ServiceUnavailableError)",
    507: "the container's disk limit is reached (DiskLimitExceededError), or the server's own"
    " disk is full (InsufficientStorageError)",
}


def _operation_id(route: Route) -> str:
    words = [w for w in route.path.replace("{", "").replace("}", "").split("/") if w]
    return route.method.lower() + "".join(w[:1].upper() + w[1:] for w in words).replace("_", "")


def build() -> dict[str, Any]:
    """The whole document."""
    # ResizeRequest travels in WebSocket frames, which OpenAPI cannot describe: listed so its
    # schema is in the document.
    types: list[object] = [ErrorBody, ResizeRequest]
    for route in ROUTES:
        for body in (route.request, route.response):
            if body is not None and body.type is not None and body.type not in types:
                types.append(body.type)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip(map(id, types), schemas, strict=True))

    def content(body: Body) -> dict[str, Any]:
        # An NDJSON body is described by the schema of one line.
        if body.type is not None:
            schema = schema_of[id(body.type)]
        elif body.media == JSON:
            schema = {"type": "object"}
        elif body.media == TEXT:
            schema = {"type": "string"}
        else:
            schema = {"type": "string", "format": "binary"}
        out: dict[str, Any] = {body.media: {"schema": schema}}
        if body.media == OCTETS:
            out[TAR] = {"schema": {"type": "string", "format": "binary"}}
        return out

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {
            "operationId": _operation_id(route),
            "summary": route.summary,
            "tags": [route.tag],
            "x-cli": route.cli,
        }
        if route.params:
            op["parameters"] = [_parameter(p) for p in route.params]
        if route.request is not None:
            op["requestBody"] = {
                "required": route.request.type is None,
                "content": content(route.request),
            }
            if route.request.description:
                op["requestBody"]["description"] = route.request.description
        ok: dict[str, Any] = {"description": route.response.description or "success"}
        if route.status == 101:
            ok["description"] = "Switching Protocols: the WebSocket is open. " + (
                route.response.description
            )
        ok["content"] = content(route.response)
        responses: dict[str, Any] = {str(route.status): ok}
        for status in sorted({*route.errors, 500}):
            responses[str(status)] = {"$ref": "#/components/responses/Error"}
        op["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Garden API (garden-trio)",
            "version": __version__,
            "description": (
                "The Cloud Foundry Garden container API as garden-trio serves it; API.md is the "
                "contract. Every error answers an ErrorBody: `type` names the error, its HTTP "
                "status follows the table: " + "; ".join(f"{s} {t}" for s, t in STATUS_TEXT.items())
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:7777"}],
        "tags": [{"name": t} for t in dict.fromkeys(r.tag for r in ROUTES)],
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {
                "Error": {
                    "description": "an error (500: InternalError, with a correlation id)",
                    "content": {JSON: {"schema": schema_of[id(ErrorBody)]}},
                }
            },
        },
    }


def _parameter(p: Param) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": p.name,
        "in": p.where,
        "description": p.description,
        "required": p.required or p.where == "path",
        "schema": p.schema,
    }
    if p.schema.get("type") == "object":
        out["style"] = "form"
        out["explode"] = True
    return out


_document: bytes | None = None


def document_bytes() -> bytes:
    """The document as JSON, built on first use."""
    global _document
    if _document is None:
        _document = msgspec.json.encode(build())
    return _document
