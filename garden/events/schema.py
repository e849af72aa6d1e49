"""Event types: the facts the log records, past tense, one tagged msgspec Struct each.

Rules for changing this file (docs/events.md has the catalogue):
- never rename a tag or remove a field; add fields with defaults only;
- a change in meaning bumps `SCHEMA_VERSION` and adds an upcaster in `events/log.py`;
- events hold facts (handles, ids, paths, pids with start times), never live objects.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from garden.api import ContainerSpec, Limits
from garden.linux.plan import FirewallRule, SpawnedProcess

SCHEMA_VERSION = 1


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event; the tag is the class name."""


class ContainerCreateStarted(Event, tag=True, frozen=True):
    """Intent: kernel work for a new container begins. Replay without a matching
    `ContainerCreated` means a crash interrupted the create and it must be undone."""

    handle: str
    container_id: str
    spec: ContainerSpec
    rootfs: str
    container_path: str
    cgroup_path: str
    uid_base: int | None
    grace_time: float
    env: list[str]
    # The address taken from the pools (empty: a container made before networking existed).
    subnet: str = ""
    container_ip: str = ""
    host_ip: str = ""
    # A rootfs from an image: its digest, its layers in the image store (diff ids, bottom
    # first) and the defaults its config gives processes (docs/images.md). `env` above
    # already holds the image's env under the client's.
    image: str = ""
    layers: list[str] = []
    default_user: str = ""
    default_dir: str = ""


class ContainerCreated(Event, tag=True, frozen=True):
    handle: str
    pid: int
    pid_start_time: int


class ContainerCreateFailed(Event, tag=True, frozen=True):
    handle: str
    reason: str


class PropertySet(Event, tag=True, frozen=True):
    handle: str
    key: str
    value: str


class PropertyDeleted(Event, tag=True, frozen=True):
    handle: str
    key: str


class GraceTimeSet(Event, tag=True, frozen=True):
    handle: str
    grace_time: float


class LimitsSet(Event, tag=True, frozen=True):
    """The limits now in force for each kind given (a kind left out is unchanged), as the
    kernel reports them after the change; None fields are "no limit"."""

    handle: str
    limits: Limits


class ContainerStopped(Event, tag=True, frozen=True):
    handle: str
    reason: Literal["request", "oom", "init-exited"]


class ContainerRestored(Event, tag=True, frozen=True):
    """Found running at start-up after a restart of the server."""

    handle: str
    pid: int
    pid_start_time: int


class ContainerDestroyStarted(Event, tag=True, frozen=True):
    handle: str
    reason: Literal["request", "grace", "recovery", "create-failed"]


class ContainerDestroyed(Event, tag=True, frozen=True):
    handle: str


class ProcessSpawning(Event, tag=True, frozen=True):
    """A process is being started in the container: written while the runtime starts it, so
    that the process id is durable before the client hears it without waiting for a second
    fsync after the pid. `facts` name its dir, monitor and output format; their pids are 0
    until ProcessStarted (or, after a crash in between, until the next start finds them in
    the dir's pid files and records ProcessStarted, or ProcessSpawnFailed if it never ran)."""

    handle: str
    process_id: str
    facts: SpawnedProcess
    args: list[str] = []


class ProcessSpawnFailed(Event, tag=True, frozen=True):
    """The spawn of ProcessSpawning started no process (the runtime failed, or the server
    stopped before the process ran): the process id is free again."""

    handle: str
    process_id: str
    reason: str


class ProcessStarted(Event, tag=True, frozen=True):
    """A process runs in the container under its monitor; `facts` find it again after a
    restart (pids with start times, its directory with the output log and exit file). After
    ProcessSpawning it need not be durable before the client hears the process id, only
    before it hears the exit status (ProcessExited comes after it)."""

    handle: str
    process_id: str
    facts: SpawnedProcess
    args: list[str] = []


class ProcessExited(Event, tag=True, frozen=True):
    """`exit_status` is 128+signal for a killed process; 255 with `lost=True` when the monitor
    vanished without writing a status."""

    handle: str
    process_id: str
    exit_status: int
    lost: bool = False


class NetInMapped(Event, tag=True, frozen=True):
    """Traffic to `host_port` on the host is forwarded to `container_port` of the container;
    the host port is taken from the pool until the container is destroyed."""

    handle: str
    host_port: int
    container_port: int


class NetOutAllowed(Event, tag=True, frozen=True):
    """A hole in the denied networks for the container's outbound traffic."""

    handle: str
    rule: FirewallRule


class BandwidthLimitSet(Event, tag=True, frozen=True):
    """The container's traffic in each direction is shaped to `rate` bytes/s with `burst`
    bytes of bucket; rate 0 means unlimited."""

    handle: str
    rate: int
    burst: int


class ResourceSwept(Event, tag=True, frozen=True):
    """A kernel resource with our marks but no owner was found and released at start-up."""

    kind: str
    name: str


class LayerUnpacked(Event, tag=True, frozen=True):
    """A layer was unpacked (and verified) into the image store, under its diff id."""

    diff_id: str
    size: int
    inodes: int = 0
    image: str = ""  # the image whose import unpacked it
    source: str = ""


class ImageImported(Event, tag=True, frozen=True):
    """An image's record was written to the store (first use, or its tags changed)."""

    digest: str
    source: str
    tags: list[str] = []
    layers: list[str] = []


class ImageTagged(Event, tag=True, frozen=True):
    """A registry reference (`registry/name:tag`) now names this stored image: its first pull,
    or a pull (`POST /images`) that found the tag moved. Creates of the reference use the
    stored image without asking the registry (docs/images.md)."""

    reference: str
    digest: str
    previous: str = ""  # the digest it named before, "" when it named none


class ImagesPruned(Event, tag=True, frozen=True):
    """Images and layers that no container used were removed from the store."""

    images: list[str] = []
    layers: list[str] = []


class ServerStarted(Event, tag=True, frozen=True):
    version: str
    pid: int


AnyEvent = (
    ContainerCreateStarted
    | ContainerCreated
    | ContainerCreateFailed
    | PropertySet
    | PropertyDeleted
    | GraceTimeSet
    | LimitsSet
    | ContainerStopped
    | ContainerRestored
    | ContainerDestroyStarted
    | ContainerDestroyed
    | ProcessSpawning
    | ProcessSpawnFailed
    | ProcessStarted
    | ProcessExited
    | NetInMapped
    | NetOutAllowed
    | BandwidthLimitSet
    | ResourceSwept
    | ServerStarted
    | LayerUnpacked
    | ImageImported
    | ImageTagged
    | ImagesPruned
)


class Origin(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who asked for the change: the request id (also in the X-Request-Id header and the
    server's log line) and the client's address; empty for the server's own work."""

    request_id: str = ""
    client: str = ""


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the log: sequence number, wall time, schema version, origin, event."""

    seq: int
    time: float
    v: int
    origin: Origin
    event: AnyEvent
