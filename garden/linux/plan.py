"""What the kernel side needs to build, find again and tear down one container.

A `ContainerPlan` is made from the facts of a `ContainerCreateStarted` event, so a plan can be
rebuilt after a crash from the log alone. It is plain data: no live objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec


class MountPlan(msgspec.Struct, frozen=True, kw_only=True):
    """A bind mount: `source` is a host path (for origin Container it is already resolved to
    the path inside the container's rootfs), `destination` a path inside the container."""

    source: str
    destination: str
    read_only: bool
    origin: str = "Host"


class NetworkPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The container's addresses: `subnet` as CIDR; the container end of its veth gets
    `container_ip`, the host end (or the subnet's bridge) `host_ip`, the container's gateway."""

    subnet: str
    container_ip: str
    host_ip: str


class PortMap(msgspec.Struct, frozen=True, kw_only=True):
    host_port: int
    container_port: int


class FirewallRule(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A hole in the denied networks for one container's outbound traffic, normalised: every
    field that is empty/zero/None matches anything."""

    networks: list[tuple[str, str]] = []  # inclusive address ranges (first, last)
    ports: list[tuple[int, int]] = []  # inclusive destination port ranges (tcp/udp only)
    protocol: str = "all"  # "tcp" | "udp" | "icmp" | "all"
    icmp_type: int | None = None
    icmp_code: int | None = None
    log: bool = False


class Bandwidth(msgspec.Struct, frozen=True, kw_only=True):
    rate: int  # bytes per second
    burst: int  # bytes


class NetWiring(msgspec.Struct, frozen=True, kw_only=True):
    """What a container has beyond its addresses: net-in mappings, net-out holes, and its
    bandwidth limit (None: unlimited)."""

    mapped_ports: list[PortMap] = []
    rules: list[FirewallRule] = []
    bandwidth: Bandwidth | None = None


class ResourceLimits(msgspec.Struct, frozen=True, kw_only=True):
    """cgroup limits of a container; None is "no limit" (the kernel's default)."""

    memory_bytes: int | None = None  # memory and memory+swap
    cpu_shares: int | None = None  # v1 cpu.shares; v2 cpu.weight is derived from it
    pids_max: int | None = None


class LimitChange(msgspec.Struct, frozen=True, kw_only=True):
    """Which cgroup limits to change: an UNSET field stays as it is, None removes the limit."""

    memory_bytes: int | msgspec.UnsetType | None = msgspec.UNSET
    cpu_shares: int | msgspec.UnsetType | None = msgspec.UNSET
    pids_max: int | msgspec.UnsetType | None = msgspec.UNSET


class DiskQuota(msgspec.Struct, frozen=True, kw_only=True):
    """Hard limits on what a container may write into its rootfs layer; None = no limit."""

    bytes: int | None = None
    inodes: int | None = None


class DiskUsage(msgspec.Struct, frozen=True, kw_only=True):
    bytes_used: int
    inodes_used: int


class ContainerStats(msgspec.Struct, frozen=True, kw_only=True):
    """Figures read from the kernel at one moment; empty dicts when there is nothing to read
    (the container's cgroup or layer is gone)."""

    memory: dict[str, int] = {}
    cpu: dict[str, int] = {}
    disk: dict[str, int] = {}
    pids: dict[str, int] = {}


class ContainerPlan(msgspec.Struct, frozen=True, kw_only=True):
    handle: str
    container_id: str  # runtime id; also the name of the cgroup leaf
    container_path: str  # directory under the state dir owned by this container
    rootfs: str  # host directory used as the read-only lower layer
    hostname: str
    env: list[str]
    bind_mounts: list[MountPlan]
    uid_base: int | None  # host uid of container root; None = privileged (no user namespace)
    cgroup_path: str  # e.g. "/garden/<container_id>", the same in every hierarchy
    netns_path: str | None = None  # join this network namespace instead of a new empty one
    network: NetworkPlan | None = None  # None: only a loopback (containers made before networking)
    resources: ResourceLimits = ResourceLimits()  # cgroup limits in force (None = unlimited)
    # Hard limits of the writable layer; not None iff the container was created with a disk
    # limit, so its upper layer lives on a filesystem of its own (decided at create).
    disk: DiskQuota | None = None
    # Diff ids of the image layers (bottom first) in the image store; empty: `rootfs` is a
    # host directory.
    layers: list[str] = []


class Started(msgspec.Struct, frozen=True, kw_only=True):
    pid: int  # host pid of the container's init
    pid_start_time: int  # field 22 of /proc/<pid>/stat, to tell a reused pid apart


class SpawnedProcess(msgspec.Struct, frozen=True, kw_only=True):
    """Facts about one spawned process; store them and pass them to every other call."""

    container_id: str
    process_dir: str
    socket_link: str  # <socket_dir>/<token>, conmon's symlink to process_dir ("": none)
    pid: int  # host pid of the process; 0 while its spawn is only announced (ProcessSpawning)
    pid_start_time: int | None  # None: it had already exited when we looked
    conmon_pid: int
    conmon_start_time: int | None
    tty: bool
    stdin: bool
    # "k8s-file": conmon's log (`log_path`); "passthrough": the raw files `stdout` and
    # `stderr` plus the server's order index (garden.linux.passthrough). Processes recorded
    # before passthrough existed have no such field: they are k8s-file.
    log_format: Literal["k8s-file", "passthrough"] = "k8s-file"
    # Which monitor runs it; `conmon_pid`/`conmon_start_time` are that monitor's, whichever it
    # is (the names are from before garden-monitor). Processes recorded before it: conmon.
    monitor: Literal["conmon", "garden-monitor"] = "conmon"

    @property
    def pids_known(self) -> bool:
        """False for the facts of a spawn announced before the runtime reported the pid."""
        return self.pid > 0

    @property
    def log_path(self) -> Path:
        return Path(self.process_dir) / "log"

    @property
    def exit_path(self) -> Path:
        return Path(self.process_dir) / "exit" / self.container_id


class LiveNetwork(msgspec.Struct, frozen=True, kw_only=True):
    """A container the log says exists, as the networker's start-up `restore` needs it."""

    plan: ContainerPlan
    wiring: NetWiring
