"""The server's state as the event log defines it, and `evolve`, the one way it changes.

Replay at start-up and the live path both call `evolve(state, record)` for every record in
sequence order, so the state after a restart is the state before it. `evolve` touches nothing
but the `ServerState` it is given: no I/O, no clock, no randomness. Container records are frozen;
`evolve` replaces them rather than editing them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, final

import msgspec

from garden import limits as lim
from garden.api import ContainerSpec, Limits
from garden.events import schema as ev
from garden.linux.plan import (
    Bandwidth,
    ContainerPlan,
    FirewallRule,
    MountPlan,
    NetWiring,
    NetworkPlan,
    PortMap,
    SpawnedProcess,
    Started,
)

Phase = Literal["creating", "active", "stopped", "destroying"]


@final
class ProcessState(msgspec.Struct, frozen=True, kw_only=True):
    process_id: str
    facts: SpawnedProcess
    exit_status: int | None = None


@final
class ContainerState(msgspec.Struct, frozen=True, kw_only=True):
    handle: str
    container_id: str
    spec: ContainerSpec
    rootfs: str
    container_path: str
    cgroup_path: str
    uid_base: int | None
    env: list[str]
    grace_time: float
    phase: Phase = "creating"
    properties: dict[str, str] = {}
    events: list[str] = []
    pid: int = 0
    pid_start_time: int = 0
    created_seq: int = 0
    processes: dict[str, ProcessState] = {}
    subnet: str = ""
    container_ip: str = ""
    host_ip: str = ""
    mapped_ports: list[PortMap] = []
    net_out: list[FirewallRule] = []
    bandwidth: Bandwidth | None = None
    # memory, cpu, disk and pids limits in force (bandwidth is above); None is "no limit"
    limits: Limits = Limits()
    image: str = ""  # digest of the image of its rootfs ("" for a host directory)
    layers: list[str] = []  # the image's layers in the store, bottom first
    default_user: str = ""  # for processes that name none ("" = Garden's root/vcap rule)
    default_dir: str = ""  # for processes that name none ("" = the user's home)

    def network(self) -> NetworkPlan | None:
        if not self.subnet:
            return None
        return NetworkPlan(subnet=self.subnet, container_ip=self.container_ip, host_ip=self.host_ip)

    def wiring(self) -> NetWiring:
        return NetWiring(
            mapped_ports=list(self.mapped_ports),
            rules=list(self.net_out),
            bandwidth=self.bandwidth,
        )

    def plan(self) -> ContainerPlan:
        """The kernel-side facts needed to build, find or tear down this container."""
        rootfs_dir = f"{self.container_path}/rootfs"
        mounts = []
        for bm in self.spec.bind_mounts:
            source = bm.src_path
            if bm.origin == "Container":
                source = f"{rootfs_dir}/{bm.src_path.lstrip('/')}"
            mounts.append(
                MountPlan(
                    source=source,
                    destination=bm.dst_path,
                    read_only=bm.mode == "RO",
                    origin=bm.origin,
                )
            )
        return ContainerPlan(
            handle=self.handle,
            container_id=self.container_id,
            container_path=self.container_path,
            rootfs=self.rootfs,
            hostname=self.handle[-63:],
            env=list(self.env),
            bind_mounts=mounts,
            uid_base=self.uid_base,
            cgroup_path=self.cgroup_path,
            network=self.network(),
            resources=lim.resource_limits(self.limits),
            disk=lim.disk_quota(self.limits.disk) if self.has_own_layer else None,
            layers=list(self.layers),
        )

    @property
    def has_own_layer(self) -> bool:
        """Created with a hard disk limit: its writable layer is a filesystem of its own."""
        return lim.needs_own_layer(self.spec.limits)

    def started(self) -> Started | None:
        if not self.pid:
            return None
        return Started(pid=self.pid, pid_start_time=self.pid_start_time)


@final
class ServerState:
    """Every container the log knows, by handle, and the last sequence number applied."""

    __slots__ = ("containers", "last_seq")

    def __init__(self) -> None:
        self.containers: dict[str, ContainerState] = {}
        self.last_seq = 0


def evolve(state: ServerState, record: ev.Record) -> None:
    """Apply one record. Records about unknown handles change nothing (`garden events verify`
    reports them)."""
    state.last_seq = record.seq
    event = record.event
    containers = state.containers
    match event:
        case ev.ContainerCreateStarted():
            containers[event.handle] = ContainerState(
                handle=event.handle,
                container_id=event.container_id,
                spec=event.spec,
                rootfs=event.rootfs,
                container_path=event.container_path,
                cgroup_path=event.cgroup_path,
                uid_base=event.uid_base,
                env=event.env,
                grace_time=event.grace_time,
                properties=event.spec.property_dict(),
                created_seq=record.seq,
                subnet=event.subnet,
                container_ip=event.container_ip,
                host_ip=event.host_ip,
                bandwidth=_create_time_bandwidth(event.spec),
                limits=lim.normalize(event.spec.limits),
                image=event.image,
                layers=event.layers,
                default_user=event.default_user,
                default_dir=event.default_dir,
            )
        case ev.ContainerCreateFailed() | ev.ContainerDestroyed():
            containers.pop(event.handle, None)
        case (
            ev.ServerStarted()
            | ev.ResourceSwept()
            | ev.LayerUnpacked()
            | ev.ImageImported()
            | ev.ImageTagged()
            | ev.ImagesPruned()
        ):
            pass  # the image store is on disk (garden/linux/images/store.py)
        case _:
            current = containers.get(event.handle)
            if current is not None:
                containers[event.handle] = _evolve_container(current, event)


def _evolve_container(c: ContainerState, event: ev.AnyEvent) -> ContainerState:
    replace = msgspec.structs.replace
    match event:
        case ev.ContainerCreated() | ev.ContainerRestored():
            return replace(c, phase="active", pid=event.pid, pid_start_time=event.pid_start_time)
        case ev.PropertySet():
            return replace(c, properties={**c.properties, event.key: event.value})
        case ev.PropertyDeleted():
            props = dict(c.properties)
            props.pop(event.key, None)
            return replace(c, properties=props)
        case ev.GraceTimeSet():
            return replace(c, grace_time=event.grace_time)
        case ev.LimitsSet():
            return replace(c, limits=lim.replace_kinds(c.limits, event.limits))
        case ev.ContainerStopped():
            events = c.events
            if event.reason == "oom" and "oom" not in events:
                events = [*events, "oom"]
            return replace(c, phase="stopped", events=events)
        case ev.ContainerDestroyStarted():
            return replace(c, phase="destroying")
        case ev.ProcessSpawning() | ev.ProcessStarted():
            process = ProcessState(process_id=event.process_id, facts=event.facts)
            return replace(c, processes={**c.processes, event.process_id: process})
        case ev.ProcessSpawnFailed():
            current = c.processes.get(event.process_id)
            if current is None or current.facts.pids_known:  # only a spawn in flight fails
                return c
            processes = dict(c.processes)
            del processes[event.process_id]
            return replace(c, processes=processes)
        case ev.ProcessExited():
            current = c.processes.get(event.process_id)
            if current is None:
                return c
            done = replace(current, exit_status=event.exit_status)
            return replace(c, processes={**c.processes, event.process_id: done})
        case ev.NetInMapped():
            mapping = PortMap(host_port=event.host_port, container_port=event.container_port)
            return replace(c, mapped_ports=[*c.mapped_ports, mapping])
        case ev.NetOutAllowed():
            return replace(c, net_out=[*c.net_out, event.rule])
        case ev.BandwidthLimitSet():
            limit = Bandwidth(rate=event.rate, burst=event.burst) if event.rate else None
            return replace(c, bandwidth=limit)
    return c


def _create_time_bandwidth(spec: ContainerSpec) -> Bandwidth | None:
    """The create's `limits.bandwidth`, as checked before the intent was recorded."""
    bw = spec.limits.bandwidth if spec.limits is not None else None
    if bw is None or not bw.rate:
        return None
    return Bandwidth(rate=bw.rate, burst=bw.burst or 0)


def replay(records: Iterable[ev.Record]) -> ServerState:
    """Build a state from an iterable of records (the log, or a snapshot's tail)."""
    state = ServerState()
    for record in records:
        evolve(state, record)
    return state
