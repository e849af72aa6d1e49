"""The supervisor: owns the nursery every container actor lives in, the handle registry, the
grace reaper, the file transfers in flight (`actors/files.py`), and recovery at start-up.

Reads (list, info, properties) are answered from the replayed state without a trip through an
actor; changes go to the container's actor, which records them in the journal first.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import AbstractAsyncContextManager, nullcontext
from ipaddress import IPv4Address, IPv4Network
from typing import final

import trio

from garden import bounds
from garden import limits as lim
from garden.actors.container import (
    AllowOut,
    AnyCommand,
    ContainerActor,
    DeleteProperty,
    Destroy,
    LimitBandwidth,
    MapPort,
    RunProcess,
    SetGraceTime,
    SetLimits,
    SetProperty,
    Stop,
)
from garden.actors.files import FileService, Transfers
from garden.actors.grace import GraceReaper
from garden.actors.images import ImageService
from garden.actors.net_rules import check_port, normalise_rule
from garden.actors.pools import Address, Holding, NetworkPools, parse_network
from garden.actors.ports import (
    ContainerFiles,
    ContainerKernel,
    ImageStore,
    Networker,
    ProcessKernel,
)
from garden.actors.processes import LiveProcess
from garden.actors.spec_rules import check_spec
from garden.api import (
    BandwidthLimits,
    Capacity,
    ContainerInfo,
    ContainerSpec,
    Limits,
    NetOutRule,
    PortMapping,
    ProcessSpec,
    check_handle,
    check_process_id,
)
from garden.config import ServerConfig
from garden.errors import (
    CapacityExhaustedError,
    ContainerNotFoundError,
    GardenError,
    HandleInUseError,
    InvalidRequestError,
    PropertyNotFoundError,
)
from garden.events import schema as ev
from garden.events.journal import Journal
from garden.events.state import ContainerState, ServerState
from garden.images.defaults import container_env, default_dir, default_user
from garden.images.model import ImageManifest
from garden.images.uri import ImageSource
from garden.linux.plan import Bandwidth, ContainerStats, LiveNetwork, PortMap

log = logging.getLogger("garden.supervisor")

RECOVER_AT_ONCE = 64


@final
class Supervisor:
    def __init__(
        self,
        config: ServerConfig,
        *,
        state: ServerState,
        journal: Journal,
        kernel: ContainerKernel,
        processes: ProcessKernel,
        networker: Networker,
        files: ContainerFiles | None = None,
        images: ImageStore | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.journal = journal
        self.kernel = kernel
        self.process_kernel = processes
        self.networker = networker
        self.pools = NetworkPools(_pool(config), config.port_pool_start, config.port_pool_size)
        self.reaper = GraceReaper(self._expire)
        self.transfers = Transfers()
        self.files = FileService(self, files)
        self.images = ImageService(images, state, journal) if images is not None else None
        self._actors: dict[str, ContainerActor] = {}
        self._reserved: set[str] = set()
        self._nursery: trio.Nursery | None = None

    # ----- life cycle -----

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.images is not None:
                await self.images.recover()
            await self._recover()
            nursery.start_soon(self.reaper.run)
            task_status.started()
            await trio.sleep_forever()

    async def _recover(self) -> None:
        """Bring every container of the replayed state back under an actor, after checking it
        against the kernel; finish or undo what a crash interrupted; sweep what has no owner.

        Containers are recovered RECOVER_AT_ONCE at a time: each records an event, and
        concurrent records share an fsync (1,000 containers one by one wait for 1,000)."""
        started = trio.current_time()
        count = len(self.state.containers)
        limiter = trio.CapacityLimiter(RECOVER_AT_ONCE)
        async with trio.open_nursery() as nursery:
            for record in list(self.state.containers.values()):
                nursery.start_soon(self._recover_guarded, record, limiter)
        adopted = trio.current_time()
        owned = {c.container_id for c in self.state.containers.values()}
        for container_id in await self.kernel.sweep(owned):
            await self.journal.record(ev.ResourceSwept(kind="container", name=container_id))
        swept = trio.current_time()
        # Containers whose create or destroy was undone or finished above are gone from the
        # state: restoring the network from what is left releases their part too.
        live = [
            LiveNetwork(plan=c.plan(), wiring=c.wiring()) for c in self.state.containers.values()
        ]
        for link in await self.networker.restore(live):
            await self.journal.record(ev.ResourceSwept(kind="link", name=link))
        self.pools = NetworkPools.rebuild(
            _pool(self.config),
            self.config.port_pool_start,
            self.config.port_pool_size,
            [_holding(c) for c in self.state.containers.values()],
        )
        now = trio.current_time()
        log.info(
            "recovered containers=%d adopt=%.3f sweep=%.3f network=%.3f",
            count,
            adopted - started,
            swept - adopted,
            now - swept,
        )

    async def _recover_guarded(self, record: ContainerState, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                await self._recover_one(record)
            except Exception:
                # The container stays listed in the phase the log gives it; a DELETE retries
                # the kernel work. Never refuse to start because of one container.
                log.exception("recover-failed handle=%s", record.handle)
                if record.handle not in self._actors:
                    await self._start_actor(record.handle, "adopt", ev.Origin())

    async def _recover_one(self, record: ContainerState) -> None:
        handle, plan = record.handle, record.plan()
        if record.phase == "creating":
            log.warning("recover-undo-create handle=%s", handle)
            await self.kernel.destroy(plan)
            await self.journal.record(
                ev.ContainerCreateFailed(handle=handle, reason="interrupted by a restart")
            )
            return
        if record.phase == "destroying":
            log.warning("recover-finish-destroy handle=%s", handle)
            await self.kernel.destroy(plan)
            await self.journal.record(ev.ContainerDestroyed(handle=handle))
            return
        if record.phase == "active":
            started = record.started()
            liveness = await self.kernel.probe(plan, started)
            if liveness == "running" and started is not None:
                await self.journal.record(
                    ev.ContainerRestored(
                        handle=handle, pid=started.pid, pid_start_time=started.pid_start_time
                    )
                )
            else:
                log.warning("recover-found-stopped handle=%s liveness=%s", handle, liveness)
                await self.journal.record(ev.ContainerStopped(handle=handle, reason="init-exited"))
                if liveness == "gone":
                    await self._start_actor(handle, "adopt", ev.Origin())
                    return
        await self._reconcile_limits(record)
        await self._start_actor(handle, "adopt", ev.Origin())

    async def _reconcile_limits(self, record: ContainerState) -> None:
        """A limit change the kernel made but a crash kept from the log is undone."""
        try:
            corrected = await self.kernel.reconcile_limits(record.plan())
        except GardenError as e:
            log.warning("recover-limits-failed handle=%s error=%s", record.handle, e)
            return
        if corrected:
            log.warning(
                "recover-limits-corrected handle=%s kinds=%s", record.handle, ",".join(corrected)
            )

    async def _start_actor(self, handle: str, mode: str, origin: ev.Origin) -> ContainerActor:
        assert self._nursery is not None
        actor = ContainerActor(
            handle,
            state=self.state,
            journal=self.journal,
            kernel=self.kernel,
            processes=self.process_kernel,
            networker=self.networker,
            stop_timeout=self.config.stop_timeout,
            on_exit=self._actor_exited,
            on_gone=self._container_gone,
        )
        self._actors[handle] = actor
        try:
            await self._nursery.start(actor.run, mode, origin)
        except BaseException:
            self._actors.pop(handle, None)
            raise
        self.reaper.watch(handle, self.state.containers[handle].grace_time)
        return actor

    def _actor_exited(self, handle: str) -> None:
        self._actors.pop(handle, None)
        self.reaper.forget(handle)

    def _container_gone(self, handle: str) -> None:
        """Destroyed, or its create failed (and recorded so): its address and ports go back
        to the pools before the actor answers, so the next request may take them."""
        self.pools.release(handle)

    async def _expire(self, handle: str) -> None:
        actor = self._actors.get(handle)
        if actor is None:
            return
        try:
            async with self.transfers.closed(handle):
                await actor.call(Destroy(reason="grace"))
        except ContainerNotFoundError:
            pass
        except Exception:
            log.exception("grace-destroy-failed handle=%s", handle)

    # ----- commands -----

    async def create(self, spec: ContainerSpec, origin: ev.Origin) -> str:
        rootfs = check_spec(spec, self.config)
        handle = spec.handle or secrets.token_hex(8)
        if handle in self.state.containers or handle in self._reserved:
            raise HandleInUseError(handle)
        if len(self.state.containers) + len(self._reserved) >= self.config.max_containers:
            raise CapacityExhaustedError(
                f"the server holds its maximum of {self.config.max_containers} containers"
            )
        request = parse_network(spec.network, _pool(self.config))
        address = self.pools.subnets.allocate(handle, request)
        self._reserved.add(handle)
        try:
            async with self._image(rootfs, origin) as image:
                container_id = secrets.token_hex(8)
                grace = (
                    spec.grace_time
                    if spec.grace_time is not None
                    else self.config.default_grace_time
                )
                cfg = image.config if image is not None else None
                await self.journal.record(
                    ev.ContainerCreateStarted(
                        handle=handle,
                        container_id=container_id,
                        spec=spec,
                        rootfs=rootfs if isinstance(rootfs, str) else rootfs.uri(),
                        container_path=os.path.join(
                            self.config.state_dir, "containers", container_id
                        ),
                        cgroup_path=f"{self.config.cgroup_parent}/{container_id}",
                        uid_base=None if spec.privileged else self.config.uid_base,
                        grace_time=grace,
                        env=container_env(cfg.env, spec.env) if cfg else list(spec.env),
                        subnet=str(address.subnet),
                        container_ip=str(address.container_ip),
                        host_ip=str(address.host_ip),
                        image=image.digest if image is not None else "",
                        layers=image.diff_ids if image is not None else [],
                        default_user=default_user(cfg) if cfg else "",
                        default_dir=default_dir(cfg) if cfg else "",
                    ),
                    origin=origin,
                )
                with trio.CancelScope(shield=True):
                    await self._start_actor(handle, "create", origin)
        finally:
            if handle not in self.state.containers:
                self.pools.subnets.release(handle)
            self._reserved.discard(handle)
        return handle

    def _image(
        self, rootfs: str | ImageSource, origin: ev.Origin
    ) -> AbstractAsyncContextManager[ImageManifest | None]:
        """The image of a create, in the store and pinned while the create records it."""
        if isinstance(rootfs, str):
            return nullcontext(None)
        return self.image_service().use(rootfs, origin)

    def image_service(self) -> ImageService:
        if self.images is None:
            raise InvalidRequestError("this server has no image store")
        return self.images

    async def send(self, handle: str, command: AnyCommand) -> object:
        self.touch(handle)
        return await self.actor(handle).call(command)

    async def destroy(self, handle: str, origin: ev.Origin) -> None:
        async with self.transfers.closed(handle):  # file transfers end before the teardown
            await self.send(handle, Destroy(origin=origin))

    async def stop(self, handle: str, kill: bool, origin: ev.Origin) -> None:
        await self.send(handle, Stop(kill=kill, origin=origin))

    async def set_property(self, handle: str, key: str, value: str, origin: ev.Origin) -> None:
        bounds.check_property(key, value)
        await self.send(handle, SetProperty(key=key, value=value, origin=origin))

    async def delete_property(self, handle: str, key: str, origin: ev.Origin) -> None:
        self.get_property(handle, key)
        await self.send(handle, DeleteProperty(key=key, origin=origin))

    async def set_grace_time(self, handle: str, grace_time: float, origin: ev.Origin) -> None:
        if grace_time < 0 or grace_time != grace_time:
            raise InvalidRequestError("grace_time must be a number of seconds >= 0")
        await self.send(handle, SetGraceTime(grace_time=grace_time, origin=origin))
        self.reaper.watch(handle, grace_time)

    async def run_process(self, handle: str, spec: ProcessSpec, origin: ev.Origin) -> LiveProcess:
        process_id = check_process_id(spec.id) if spec.id else secrets.token_hex(8)
        bounds.check_process_spec(spec)
        actor = self.actor(handle)
        self.touch(handle)
        await actor.call(RunProcess(spec=spec, process_id=process_id, origin=origin))
        return actor.processes.get(process_id)

    def process(self, handle: str, process_id: str) -> LiveProcess:
        self.container(handle)
        return self.actor(handle).processes.get(process_id)

    def signal_process(self, handle: str, process_id: str, signum: int) -> bool:
        process = self.process(handle, process_id)
        if not process.running:
            return False
        return self.process_kernel.signal(process.facts, signum)

    async def net_in(
        self, handle: str, host_port: int, container_port: int, origin: ev.Origin
    ) -> PortMapping:
        """Forward a host port (0: one from the pool) to a container port (0: the same)."""
        self.container(handle)
        if container_port:
            check_port(container_port, "container_port")
        if host_port:
            check_port(host_port, "host_port")
        port = self.pools.ports.allocate(handle, host_port)
        mapping = PortMap(host_port=port, container_port=container_port or port)
        try:
            await self.send(
                handle,
                MapPort(
                    host_port=mapping.host_port,
                    container_port=mapping.container_port,
                    origin=origin,
                ),
            )
        except BaseException:
            self.pools.ports.release(handle, port)
            raise
        return PortMapping(host_port=mapping.host_port, container_port=mapping.container_port)

    async def net_out(self, handle: str, rule: NetOutRule, origin: ev.Origin) -> None:
        self.container(handle)
        await self.send(handle, AllowOut(rule=normalise_rule(rule), origin=origin))

    async def limit_bandwidth(
        self, handle: str, request: BandwidthLimits, origin: ev.Origin
    ) -> BandwidthLimits:
        result = await self.send(handle, LimitBandwidth(request=request, origin=origin))
        assert result is None or isinstance(result, Bandwidth)
        return _bandwidth_limits(result)

    def bandwidth(self, handle: str) -> BandwidthLimits:
        return _bandwidth_limits(self.container(handle).bandwidth)

    async def set_limits(self, handle: str, put: Limits, origin: ev.Origin) -> Limits:
        """Apply a limits request; answer every limit in force afterwards."""
        lim.check_limits(put)
        result = await self.send(handle, SetLimits(limits=put, origin=origin))
        assert isinstance(result, Limits)
        return result

    # ----- reads -----

    def actor(self, handle: str) -> ContainerActor:
        actor = self._actors.get(handle)
        if actor is None:
            check_handle(handle)
            raise ContainerNotFoundError(handle)
        return actor

    def touch(self, handle: str) -> None:
        self.reaper.touch(handle)

    def container(self, handle: str) -> ContainerState:
        record = self.state.containers.get(handle)
        if record is None or handle not in self._actors:
            check_handle(handle)
            raise ContainerNotFoundError(handle)
        self.touch(handle)
        return record

    def handles(self, filters: dict[str, str]) -> list[str]:
        return [
            c.handle
            for c in self.state.containers.values()
            if c.handle in self._actors
            and c.phase != "destroying"
            and all(c.properties.get(k) == v for k, v in filters.items())
        ]

    def limits(self, handle: str) -> Limits:
        return self.container(handle).limits

    async def stats(self, handle: str) -> ContainerStats:
        """The container's figures, read from the kernel now."""
        c = self.container(handle)
        if c.phase not in ("active", "stopped"):
            return ContainerStats()
        return await self.kernel.stats(c.plan())

    def info(self, handle: str, stats: ContainerStats | None = None) -> ContainerInfo:
        """The container's info from the state, with `stats` (from `stats()`) as its figures."""
        c = self.container(handle)
        stats = stats or ContainerStats()
        return ContainerInfo(
            state="stopped" if c.phase == "stopped" else "active",
            events=list(c.events),
            host_ip=c.host_ip,
            container_ip=c.container_ip,
            container_path=c.container_path,
            process_ids=[p.process_id for p in self.actor(handle).processes.running()],
            properties=dict(c.properties),
            mapped_ports=[
                PortMapping(host_port=m.host_port, container_port=m.container_port)
                for m in c.mapped_ports
            ],
            grace_time=c.grace_time,
            bandwidth_stat=self.networker.stats(c.plan(), c.wiring()),
            memory_stat=stats.memory,
            cpu_stat=stats.cpu,
            disk_stat=stats.disk,
            pids_stat=stats.pids,
        )

    def get_property(self, handle: str, key: str) -> str:
        props = self.container(handle).properties
        if key not in props:
            raise PropertyNotFoundError(f"unknown property: {key}", handle=handle)
        return props[key]

    def capacity(self) -> Capacity:
        stat = os.statvfs(self.config.state_dir)
        return Capacity(
            memory_in_bytes=_memory_total(),
            disk_in_bytes=stat.f_bavail * stat.f_frsize,
            max_containers=max(
                0,
                min(
                    self.config.max_containers - len(self.state.containers),
                    self.pools.subnets.free_dynamic(),
                ),
            ),
        )


def _pool(config: ServerConfig) -> IPv4Network:
    return IPv4Network(config.network_pool)


def _holding(c: ContainerState) -> Holding:
    address = None
    if c.subnet:
        address = Address(
            IPv4Network(c.subnet), IPv4Address(c.container_ip), IPv4Address(c.host_ip)
        )
    return Holding(c.handle, address, [m.host_port for m in c.mapped_ports])


def _bandwidth_limits(limit: Bandwidth | None) -> BandwidthLimits:
    if limit is None:
        return BandwidthLimits(rate=0, burst=0)
    return BandwidthLimits(rate=limit.rate, burst=limit.burst)


def _memory_total() -> int:
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            if line.startswith(b"MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0
