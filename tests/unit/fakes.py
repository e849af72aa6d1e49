"""Fakes for unit tests of the actors: a kernel and a networker that record calls instead of
making containers and links."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, final

import msgspec
import trio

from garden.actors.ports import Liveness
from garden.api import ProcessSpec
from garden.errors import ConflictError, ExecutableNotFoundError, RuntimeFailedError
from garden.linux.net.netlink import NetworkError
from garden.linux.plan import (
    Bandwidth,
    ContainerPlan,
    ContainerStats,
    DiskQuota,
    FirewallRule,
    LimitChange,
    LiveNetwork,
    NetWiring,
    PortMap,
    ResourceLimits,
    SpawnedProcess,
    Started,
)


@final
class FakeKernel:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.live: dict[str, Started] = {}
        self.fail_create: set[str] = set()
        self.stopped_inits: dict[int, trio.Event] = {}
        self._pids = itertools.count(1000)
        # Limits as a kernel would hold them, by container id; memory rounds down to pages.
        self.limits: dict[str, ResourceLimits] = {}
        self.disk_quotas: dict[str, DiskQuota] = {}
        self.disk_used: dict[str, int] = {}
        self.ooms: dict[str, trio.Event] = {}

    async def create(self, plan: ContainerPlan) -> Started:
        self.calls.append(("create", plan.handle))
        await trio.lowlevel.checkpoint()
        if plan.handle in self.fail_create:
            raise RuntimeFailedError("runc create", "boom", handle=plan.handle)
        started = Started(pid=next(self._pids), pid_start_time=42)
        self.live[plan.container_id] = started
        self.limits[plan.container_id] = _rounded(plan.resources)
        if plan.disk is not None:
            self.disk_quotas[plan.container_id] = plan.disk
        self.stopped_inits[started.pid] = trio.Event()
        return started

    async def destroy(self, plan: ContainerPlan) -> None:
        self.calls.append(("destroy", plan.handle))
        await trio.lowlevel.checkpoint()
        started = self.live.pop(plan.container_id, None)
        if started is not None:
            self.stopped_inits[started.pid].set()

    async def stop(self, plan: ContainerPlan, *, kill: bool, timeout: float) -> None:
        self.calls.append(("stop-kill" if kill else "stop", plan.handle))
        await trio.lowlevel.checkpoint()

    async def probe(self, plan: ContainerPlan, started: Started | None) -> Liveness:
        self.calls.append(("probe", plan.handle))
        live = self.live.get(plan.container_id)
        if live is not None and started == live:
            return "running"
        return "gone"

    async def wait_exit(self, started: Started) -> None:
        event = self.stopped_inits.setdefault(started.pid, trio.Event())
        await event.wait()

    async def sweep(self, owned: set[str]) -> list[str]:
        self.calls.append(("sweep", ",".join(sorted(owned))))
        await trio.lowlevel.checkpoint()
        orphans = sorted(set(self.live) - owned)
        for container_id in orphans:
            del self.live[container_id]
        return orphans

    async def set_limits(self, plan: ContainerPlan, change: LimitChange) -> ResourceLimits:
        self.calls.append(("set_limits", plan.handle))
        await trio.lowlevel.checkpoint()
        fields = {f: v for f in change.__struct_fields__ if (v := getattr(change, f)) is not
                  msgspec.UNSET}  # fmt: skip
        current = self.limits.setdefault(plan.container_id, ResourceLimits())
        if fields.get("cpu_shares", 1) is None:
            fields["cpu_shares"] = 1024  # the kernel's default comes back
        self.limits[plan.container_id] = _rounded(msgspec.structs.replace(current, **fields))
        return self.limits[plan.container_id]

    async def set_disk_quota(self, plan: ContainerPlan, quota: DiskQuota) -> None:
        self.calls.append(("set_disk_quota", plan.handle))
        await trio.lowlevel.checkpoint()
        used = self.disk_used.get(plan.container_id, 0)
        if quota.bytes is not None and quota.bytes < used:
            raise ConflictError(f"below the {used} bytes in use")
        self.disk_quotas[plan.container_id] = quota

    async def reconcile_limits(self, plan: ContainerPlan) -> list[str]:
        self.calls.append(("reconcile_limits", plan.handle))
        await trio.lowlevel.checkpoint()
        return []

    async def stats(self, plan: ContainerPlan) -> ContainerStats:
        await trio.lowlevel.checkpoint()
        if plan.container_id not in self.live:
            return ContainerStats()
        return ContainerStats(
            memory={"usage_in_bytes": 4096, "rss": 4096, "cache": 0},
            cpu={"usage": 1000},
            disk={"bytes_used": self.disk_used.get(plan.container_id, 0), "inodes_used": 1},
            pids={"current": 1},
        )

    async def wait_oom(self, plan: ContainerPlan) -> None:
        await self.ooms.setdefault(plan.container_id, trio.Event()).wait()

    def oom(self, container_id: str) -> None:
        """The kernel OOM-kills a process of the container."""
        self.ooms.setdefault(container_id, trio.Event()).set()

    def crash_init(self, container_id: str) -> None:
        """The container's init dies on its own."""
        started = self.live.pop(container_id)
        self.stopped_inits[started.pid].set()


@final
class FakeChunk:
    def __init__(self, source: str, data: bytes) -> None:
        self.source = source
        self.data = data


@final
class FakeProcesses:
    """A process kernel whose processes print what the test says and exit when told."""

    def __init__(self) -> None:
        self.spawned: dict[str, SpawnedProcess] = {}
        self.outputs: dict[str, list[FakeChunk]] = {}
        self.exits: dict[str, trio.Event] = {}
        self.statuses: dict[str, int] = {}
        self.signals: list[tuple[str, int]] = []
        self.cleaned: list[str] = []

    async def spawn(
        self,
        plan: ContainerPlan,
        started: Started,
        spec: ProcessSpec,
        process_id: str,
        *,
        container_env: list[str],
        privileged_container: bool,
        announce: Callable[[SpawnedProcess], object] | None = None,
    ) -> SpawnedProcess:
        await trio.lowlevel.checkpoint()
        if spec.path == "/missing":
            raise ExecutableNotFoundError(f"{spec.path} not found", handle=plan.handle)
        planned = SpawnedProcess(
            container_id=plan.container_id,
            process_dir=f"/fake/{plan.container_id}/{process_id}",
            socket_link="/fake/link",
            pid=0,
            pid_start_time=None,
            conmon_pid=0,
            conmon_start_time=None,
            tty=False,
            stdin=spec.stdin,
        )
        if announce is not None:
            announce(planned)
        await trio.lowlevel.checkpoint()  # the runtime runs meanwhile
        if spec.path == "/runtime-fails":
            raise RuntimeFailedError("fake exec", "the runtime said no")
        facts = msgspec.structs.replace(
            planned,
            pid=len(self.spawned) + 5000,
            pid_start_time=1,
            conmon_pid=1,
            conmon_start_time=1,
        )
        self.spawned[facts.process_dir] = facts
        self.outputs[facts.process_dir] = [
            FakeChunk("stdout", " ".join(spec.args).encode()),
            FakeChunk("stderr", b"err\xc3"),
            FakeChunk("stderr", b"\xa9"),
        ]
        self.exits[facts.process_dir] = trio.Event()
        return facts

    def finish(self, facts: SpawnedProcess, status: int) -> None:
        self.statuses[facts.process_dir] = status
        self.exits[facts.process_dir].set()

    async def wait_exit(self, facts: SpawnedProcess) -> int | None:
        await self.exits.setdefault(facts.process_dir, trio.Event()).wait()
        return self.statuses.get(facts.process_dir)

    def signal(self, facts: SpawnedProcess, signum: int) -> bool:
        self.signals.append((facts.process_dir, signum))
        self.finish(facts, 128 + signum)
        return True

    def resize(self, facts: SpawnedProcess, rows: int, columns: int) -> bool:
        return True

    async def open_stdin(self, facts: SpawnedProcess) -> trio.abc.SendStream:
        raise NotImplementedError

    @asynccontextmanager
    async def output(
        self, facts: SpawnedProcess, *, replay_bytes: int | None = None
    ) -> AsyncIterator[AsyncIterator[FakeChunk]]:
        async def chunks() -> AsyncIterator[FakeChunk]:
            for chunk in self.outputs.get(facts.process_dir, []):
                yield chunk
            await self.exits[facts.process_dir].wait()

        yield chunks()

    async def cleanup(self, facts: SpawnedProcess) -> None:
        await trio.lowlevel.checkpoint()
        self.cleaned.append(facts.process_dir)

    async def find_announced(self, planned: SpawnedProcess) -> SpawnedProcess | None:
        """What a crashed server's spawn left: the facts `spawned` holds, if any."""
        await trio.lowlevel.checkpoint()
        return self.spawned.get(planned.process_dir)

    async def sweep(self, plan: ContainerPlan, known: set[str]) -> list[str]:
        await trio.lowlevel.checkpoint()
        return []


@final
class FakeNetworker:
    """Records what the actors ask of the network side; `fail_setup` makes a set-up fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_setup: set[str] = set()
        self.mapped: dict[int, tuple[str, int]] = {}
        self.rules: dict[str, list[FirewallRule]] = {}
        self.bandwidth: dict[str, Bandwidth] = {}
        self.restored: list[LiveNetwork] = []

    async def restore(self, live: Sequence[LiveNetwork]) -> list[str]:
        self.calls.append(("restore", ",".join(sorted(c.plan.handle for c in live))))
        await trio.lowlevel.checkpoint()
        self.restored = list(live)
        self.mapped = {
            m.host_port: (c.plan.handle, m.container_port)
            for c in live
            for m in c.wiring.mapped_ports
        }
        return []

    async def setup(self, plan: ContainerPlan, started: Started, wiring: NetWiring) -> None:
        self.calls.append(("setup", plan.handle))
        await trio.lowlevel.checkpoint()
        if plan.handle in self.fail_setup:
            raise NetworkError(f"connect {plan.handle}", "boom")
        if wiring.bandwidth is not None:
            self.bandwidth[plan.handle] = wiring.bandwidth

    async def teardown(self, plan: ContainerPlan, wiring: NetWiring) -> None:
        self.calls.append(("teardown", plan.handle))
        await trio.lowlevel.checkpoint()
        for m in wiring.mapped_ports:
            self.mapped.pop(m.host_port, None)
        self.rules.pop(plan.handle, None)
        self.bandwidth.pop(plan.handle, None)

    async def map_port(self, plan: ContainerPlan, mapping: PortMap) -> None:
        self.calls.append(("map_port", plan.handle))
        await trio.lowlevel.checkpoint()
        self.mapped[mapping.host_port] = (plan.handle, mapping.container_port)

    async def unmap_port(self, plan: ContainerPlan, mapping: PortMap) -> None:
        self.calls.append(("unmap_port", plan.handle))
        await trio.lowlevel.checkpoint()
        self.mapped.pop(mapping.host_port, None)

    async def allow_out(self, plan: ContainerPlan, rule: FirewallRule) -> None:
        self.calls.append(("allow_out", plan.handle))
        await trio.lowlevel.checkpoint()
        self.rules.setdefault(plan.handle, []).append(rule)

    async def limit_bandwidth(
        self, plan: ContainerPlan, current: Bandwidth | None, new: Bandwidth | None
    ) -> None:
        self.calls.append(("limit_bandwidth", plan.handle))
        await trio.lowlevel.checkpoint()
        if new is None:
            self.bandwidth.pop(plan.handle, None)
        else:
            self.bandwidth[plan.handle] = new

    def stats(self, plan: ContainerPlan, wiring: NetWiring) -> dict[str, int]:
        bw = wiring.bandwidth
        return {"in_rate": bw.rate if bw else 0, "out_rate": bw.rate if bw else 0}


def _rounded(r: ResourceLimits) -> ResourceLimits:
    if r.memory_bytes is None:
        return r
    return msgspec.structs.replace(r, memory_bytes=r.memory_bytes // 4096 * 4096)


async def serve_fakes(
    nursery: trio.Nursery,
    tmp_path: Path,
    *,
    processes: FakeProcesses | None = None,
    kernel: FakeKernel | None = None,
    files: object | None = None,
    **settings: Any,
) -> str:
    """A real HTTP server on 127.0.0.1 over the fake kernel parts; its base URL. `settings`
    are more fields of its `ServerConfig`."""
    from garden.config import ServerConfig
    from garden.main import serve

    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    config = ServerConfig(
        state_dir=str(tmp_path / "state"),
        default_rootfs=str(rootfs),
        bind_port=0,
        tag="gtest",
        handle_signals=False,
        **settings,
    )
    extra: dict[str, object] = {} if files is None else {"files": files}
    binds = await nursery.start(
        partial(
            serve,
            config,
            kernel=kernel or FakeKernel(),
            processes=processes or FakeProcesses(),
            networker=FakeNetworker(),
            **extra,
        )
    )
    return str(binds[0])
