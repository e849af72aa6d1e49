"""Wire types of the Garden REST API (API.md), shared by the server, the client and the events.

Request types are decoded with `decode_request`, which turns every msgspec failure into an
`InvalidRequestError`; unknown keys are ignored, wrong types are a 400.
"""

from __future__ import annotations

import re
from typing import Literal, TypeVar

import msgspec

from garden.errors import InvalidRequestError

HANDLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")


def check_handle(handle: str) -> str:
    if not HANDLE_RE.fullmatch(handle):
        raise InvalidRequestError(
            f"invalid handle {handle!r}: must match [A-Za-z0-9][A-Za-z0-9_.+-]{{0,127}}"
        )
    return handle


class Wire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base of every wire type."""


class Property(Wire, frozen=True):
    key: str
    value: str


class BindMount(Wire, frozen=True):
    src_path: str
    dst_path: str
    mode: Literal["RO", "RW"] = "RO"
    origin: Literal["Host", "Container"] = "Host"


class MemoryLimits(Wire, frozen=True):
    limit_in_bytes: int | None = None


class CpuLimits(Wire, frozen=True):
    limit_in_shares: int | None = None


class DiskLimits(Wire, frozen=True):
    block_soft: int | None = None
    block_hard: int | None = None
    inode_soft: int | None = None
    inode_hard: int | None = None
    byte_soft: int | None = None
    byte_hard: int | None = None


class BandwidthLimits(Wire, frozen=True):
    rate: int | None = None
    burst: int | None = None


class PidLimits(Wire, frozen=True):
    max: int | None = None


class Limits(Wire, frozen=True):
    memory: MemoryLimits | None = None
    cpu: CpuLimits | None = None
    disk: DiskLimits | None = None
    bandwidth: BandwidthLimits | None = None
    pids: PidLimits | None = None


class ContainerSpec(Wire, frozen=True):
    handle: str | None = None
    grace_time: float | None = None
    rootfs: str | None = None
    env: list[str] = []
    privileged: bool = False
    properties: dict[str, str] | list[Property] = {}
    bind_mounts: list[BindMount] = []
    network: str | None = None
    limits: Limits | None = None

    def property_dict(self) -> dict[str, str]:
        if isinstance(self.properties, dict):
            return dict(self.properties)
        return {p.key: p.value for p in self.properties}


class HandleReply(Wire, frozen=True):
    handle: str


class HandlesReply(Wire, frozen=True):
    handles: list[str]


class Capacity(Wire, frozen=True):
    memory_in_bytes: int
    disk_in_bytes: int
    max_containers: int


class PortMapping(Wire, frozen=True):
    host_port: int
    container_port: int


class ContainerInfo(Wire, frozen=True):
    state: Literal["active", "stopped"]
    events: list[str]
    host_ip: str
    container_ip: str
    container_path: str
    process_ids: list[str]
    properties: dict[str, str]
    mapped_ports: list[PortMapping]
    grace_time: float
    memory_stat: dict[str, int] = {}
    cpu_stat: dict[str, int] = {}
    disk_stat: dict[str, int] = {}
    bandwidth_stat: dict[str, int] = {}
    pids_stat: dict[str, int] = {}


class ContainerMetrics(Wire, frozen=True):
    """`GET /containers/:h/metrics`: the figures of info, read from the kernel now."""

    memory_stat: dict[str, int] = {}
    cpu_stat: dict[str, int] = {}
    disk_stat: dict[str, int] = {}
    bandwidth_stat: dict[str, int] = {}
    pids_stat: dict[str, int] = {}


class NetInRequest(Wire, frozen=True):
    """`POST /containers/:h/net/in`: 0 or absent host port = one from the pool; absent
    container port = the host port."""

    host_port: int = 0
    container_port: int = 0


class NetOutRule(Wire, frozen=True):
    """`POST /containers/:h/net/out`: a hole in the denied networks for this container."""

    network: str | None = None  # "a.b.c.d/n" or "a.b.c.d-e.f.g.h"; absent = any
    port: int | None = None
    port_range: str | None = None  # "a:b"
    protocol: Literal["tcp", "udp", "icmp", "all"] = "all"
    icmp_type: int | None = None
    icmp_code: int | None = None
    log: bool = False


class PropertyValue(Wire, frozen=True):
    value: str


class GraceTime(Wire, frozen=True):
    grace_time: float


class StopRequest(Wire, frozen=True):
    kill: bool = False


class ErrorBody(Wire, frozen=True):
    type: str
    message: str
    handle: str = ""
    process_id: str = ""


class Empty(Wire, frozen=True):
    """`{}`: the answer of every route that has nothing to return."""


class BulkMetricsEntry(Wire, frozen=True, omit_defaults=True):
    """One handle's entry of `GET /containers/bulk_metrics`: its metrics, or the error."""

    metrics: ContainerMetrics | None = None
    error: ErrorBody | None = None


class BulkInfoEntry(Wire, frozen=True, omit_defaults=True):
    """One handle's entry of `GET /containers/bulk_info`: its info, or the error naming it."""

    info: ContainerInfo | None = None
    error: ErrorBody | None = None


# --- processes (API.md "Process stream"; ProcessSpec, TtySize and SignalRequest are below) ---


class ProcessPayload(Wire, frozen=True, omit_defaults=True):
    """One NDJSON line of a process stream: the id first, then output chunks (`source` and
    `data`), last the `exit_status`."""

    process_id: str
    source: Literal["stdout", "stderr"] | None = None
    data: str | None = None
    exit_status: int | None = None


class ResizeRequest(Wire, frozen=True):
    """A terminal WebSocket text frame from the client."""

    resize: TtySize


class ExitStatus(Wire, frozen=True):
    """A terminal WebSocket text frame from the server: the process has exited."""

    exit_status: int


# --- networking: NetInRequest and NetOutRule are above ---

NetInReply = PortMapping


# --- limits: the kind in `/containers/:h/limits/<kind>` of each limit object ---

LIMIT_KINDS: dict[str, type[Wire]] = {
    "memory": MemoryLimits,
    "cpu": CpuLimits,
    "disk": DiskLimits,
    "bandwidth": BandwidthLimits,
    "pids": PidLimits,
}


T = TypeVar("T")


def decode_request(body: bytes, kind: type[T]) -> T:
    """Decode a JSON request body; an empty body is an empty object."""
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"invalid request: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"malformed JSON: {exc}") from exc


_encoder = msgspec.json.Encoder()


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


class TtySize(Wire, frozen=True):
    columns: int = 80
    rows: int = 24


class ProcessSpec(Wire, frozen=True):
    """`POST /containers/:h/processes`. `stdin` (beyond the seed): keep the process's stdin open
    for `PUT .../stdin`; without it stdin is empty (a terminal always has stdin)."""

    path: str
    args: list[str] = []
    env: list[str] = []
    dir: str | None = None
    user: str | None = None
    privileged: bool = False
    rlimits: dict[str, int] = {}
    tty: bool | TtySize = False
    id: str | None = None
    stdin: bool = False

    def tty_size(self) -> TtySize | None:
        if self.tty is True:
            return TtySize()
        if isinstance(self.tty, TtySize):
            return self.tty
        return None


class SignalRequest(Wire, frozen=True):
    signal: str | int


def check_process_id(process_id: str) -> str:
    if not HANDLE_RE.fullmatch(process_id):
        raise InvalidRequestError(
            f"invalid process id {process_id!r}: must match [A-Za-z0-9][A-Za-z0-9_.+-]{{0,127}}"
        )
    return process_id
