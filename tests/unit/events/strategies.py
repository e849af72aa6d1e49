"""Hypothesis strategies for every event type, with values the JSON log can carry."""

from __future__ import annotations

from typing import get_args

from hypothesis import strategies as st

from garden.api import (
    BandwidthLimits,
    BindMount,
    ContainerSpec,
    CpuLimits,
    DiskLimits,
    Limits,
    MemoryLimits,
    PidLimits,
    Property,
)
from garden.events import schema as s
from garden.linux.plan import FirewallRule, SpawnedProcess

text = st.text(max_size=24)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
opt_int = st.none() | ints

limits = st.builds(
    Limits,
    memory=st.none() | st.builds(MemoryLimits, limit_in_bytes=opt_int),
    cpu=st.none() | st.builds(CpuLimits, limit_in_shares=opt_int),
    disk=st.none()
    | st.builds(
        DiskLimits,
        block_soft=opt_int,
        block_hard=opt_int,
        inode_soft=opt_int,
        inode_hard=opt_int,
        byte_soft=opt_int,
        byte_hard=opt_int,
    ),
    bandwidth=st.none() | st.builds(BandwidthLimits, rate=opt_int, burst=opt_int),
    pids=st.none() | st.builds(PidLimits, max=opt_int),
)
specs = st.builds(
    ContainerSpec,
    handle=st.none() | text,
    grace_time=st.none() | floats,
    rootfs=st.none() | text,
    env=st.lists(text, max_size=3),
    privileged=st.booleans(),
    properties=st.dictionaries(text, text, max_size=3)
    | st.lists(st.builds(Property, key=text, value=text), max_size=3),
    bind_mounts=st.lists(
        st.builds(
            BindMount,
            src_path=text,
            dst_path=text,
            mode=st.sampled_from(["RO", "RW"]),
            origin=st.sampled_from(["Host", "Container"]),
        ),
        max_size=2,
    ),
    network=st.none() | text,
    limits=st.none() | limits,
)

facts = st.builds(
    SpawnedProcess,
    container_id=text,
    process_dir=text,
    socket_link=text,
    pid=ints,
    pid_start_time=opt_int,
    conmon_pid=ints,
    conmon_start_time=opt_int,
    tty=st.booleans(),
    stdin=st.booleans(),
)
rules = st.builds(
    FirewallRule,
    networks=st.lists(st.tuples(text, text), max_size=2),
    ports=st.lists(st.tuples(ints, ints), max_size=2),
    protocol=st.sampled_from(["tcp", "udp", "icmp", "all"]),
    icmp_type=opt_int,
    icmp_code=opt_int,
    log=st.booleans(),
)

EVENTS: dict[type, st.SearchStrategy[s.AnyEvent]] = {
    s.ContainerCreateStarted: st.builds(
        s.ContainerCreateStarted,
        handle=text,
        container_id=text,
        spec=specs,
        rootfs=text,
        container_path=text,
        cgroup_path=text,
        uid_base=opt_int,
        grace_time=floats,
        env=st.lists(text, max_size=3),
        subnet=text,
        container_ip=text,
        host_ip=text,
        image=text,
        layers=st.lists(text, max_size=3),
        default_user=text,
        default_dir=text,
    ),
    s.ContainerCreated: st.builds(s.ContainerCreated, handle=text, pid=ints, pid_start_time=ints),
    s.ContainerCreateFailed: st.builds(s.ContainerCreateFailed, handle=text, reason=text),
    s.PropertySet: st.builds(s.PropertySet, handle=text, key=text, value=text),
    s.PropertyDeleted: st.builds(s.PropertyDeleted, handle=text, key=text),
    s.GraceTimeSet: st.builds(s.GraceTimeSet, handle=text, grace_time=floats),
    s.LimitsSet: st.builds(s.LimitsSet, handle=text, limits=limits),
    s.ContainerStopped: st.builds(
        s.ContainerStopped, handle=text, reason=st.sampled_from(["request", "oom", "init-exited"])
    ),
    s.ContainerRestored: st.builds(s.ContainerRestored, handle=text, pid=ints, pid_start_time=ints),
    s.ContainerDestroyStarted: st.builds(
        s.ContainerDestroyStarted,
        handle=text,
        reason=st.sampled_from(["request", "grace", "recovery", "create-failed"]),
    ),
    s.ContainerDestroyed: st.builds(s.ContainerDestroyed, handle=text),
    s.ProcessSpawning: st.builds(
        s.ProcessSpawning,
        handle=text,
        process_id=text,
        facts=facts,
        args=st.lists(text, max_size=3),
    ),
    s.ProcessSpawnFailed: st.builds(
        s.ProcessSpawnFailed, handle=text, process_id=text, reason=text
    ),
    s.ProcessStarted: st.builds(
        s.ProcessStarted,
        handle=text,
        process_id=text,
        facts=facts,
        args=st.lists(text, max_size=3),
    ),
    s.ProcessExited: st.builds(
        s.ProcessExited, handle=text, process_id=text, exit_status=ints, lost=st.booleans()
    ),
    s.NetInMapped: st.builds(s.NetInMapped, handle=text, host_port=ints, container_port=ints),
    s.NetOutAllowed: st.builds(s.NetOutAllowed, handle=text, rule=rules),
    s.BandwidthLimitSet: st.builds(s.BandwidthLimitSet, handle=text, rate=ints, burst=ints),
    s.ResourceSwept: st.builds(s.ResourceSwept, kind=text, name=text),
    s.ServerStarted: st.builds(s.ServerStarted, version=text, pid=ints),
    s.LayerUnpacked: st.builds(
        s.LayerUnpacked, diff_id=text, size=ints, inodes=ints, image=text, source=text
    ),
    s.ImageImported: st.builds(
        s.ImageImported,
        digest=text,
        source=text,
        tags=st.lists(text, max_size=2),
        layers=st.lists(text, max_size=3),
    ),
    s.ImageTagged: st.builds(s.ImageTagged, reference=text, digest=text, previous=text),
    s.ImagesPruned: st.builds(
        s.ImagesPruned, images=st.lists(text, max_size=2), layers=st.lists(text, max_size=3)
    ),
}
assert set(EVENTS) == set(get_args(s.AnyEvent)), "add a strategy for the new event type"

any_event = st.one_of(*EVENTS.values())
origins = st.builds(s.Origin, request_id=text, client=text)
