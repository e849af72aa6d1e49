"""A synthetic but realistic history for timing tests: containers created, their properties
set, processes started and exited, interleaved across containers as a busy server logs them."""

from __future__ import annotations

from collections.abc import Iterator

from garden.api import ContainerSpec
from garden.events import schema as ev
from garden.linux.plan import SpawnedProcess

Batch = list[tuple[ev.AnyEvent, ev.Origin]]


def container_event(c: int, r: int) -> ev.AnyEvent:
    """The `r`-th event of container `c`: created, then a mix in which every tenth event starts
    a process and the next one ends it, the rest set properties and the grace time."""
    handle = f"ctr-{c:05d}"
    cid = f"{c:016x}"
    path = f"/var/lib/garden/containers/{cid}"
    if r == 0:
        spec = ContainerSpec(
            handle=handle,
            rootfs="/usr/local/lib/garden/rootfs",
            env=["PATH=/usr/bin:/bin", f"INDEX={c}"],
            properties={"owner": "ci", "pipeline": f"p{c % 17}"},
        )
        return ev.ContainerCreateStarted(
            handle=handle,
            container_id=cid,
            spec=spec,
            rootfs="/usr/local/lib/garden/rootfs",
            container_path=path,
            cgroup_path=f"/garden/{cid}",
            uid_base=1_000_000_000,
            grace_time=300.0,
            env=["PATH=/usr/bin:/bin", f"INDEX={c}"],
        )
    if r == 1:
        return ev.ContainerCreated(handle=handle, pid=10_000 + c, pid_start_time=123_456 + c)
    if r % 10 == 4:
        facts = SpawnedProcess(
            container_id=cid,
            process_dir=f"{path}/processes/p{r}",
            socket_link=f"/run/garden-trio/garden/{c:x}{r:x}",
            pid=20_000 + r,
            pid_start_time=200_000 + r,
            conmon_pid=30_000 + r,
            conmon_start_time=300_000 + r,
            tty=False,
            stdin=True,
        )
        return ev.ProcessStarted(handle=handle, process_id=f"p{r}", facts=facts, args=["sh"])
    if r % 10 == 5:
        return ev.ProcessExited(handle=handle, process_id=f"p{r - 1}", exit_status=r % 3)
    if r % 100 == 9:
        return ev.GraceTimeSet(handle=handle, grace_time=float(r))
    return ev.PropertySet(handle=handle, key=f"key-{r % 40}", value=f"value-{r}")


def history(containers: int, per_container: int, *, batch: int = 10_000) -> Iterator[Batch]:
    """`containers * per_container` events in batches, round-robin over the containers."""
    out: Batch = []
    origin = ev.Origin(request_id="0123456789abcdef", client="127.0.0.1")
    for r in range(per_container):
        for c in range(containers):
            out.append((container_event(c, r), origin))
            if len(out) == batch:
                yield out
                out = []
    if out:
        yield out
