"""The container actor: one trio task per container that owns its kernel resources.

It builds the container (or adopts one found at start-up), then consumes commands from its
mailbox one at a time. Every change is recorded in the journal before the command's reply is
settled. A watcher task notices when the container's init exits. The actor ends after a
destroy; its mailbox then answers every caller with `ContainerNotFoundError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, final

import msgspec
import trio

from garden import bounds, faults
from garden import limits as lim
from garden.actors.mailbox import Mailbox, Reply
from garden.actors.net_rules import bandwidth_after
from garden.actors.ports import ContainerKernel, Networker, ProcessKernel
from garden.actors.processes import ProcessTable
from garden.api import BandwidthLimits, Limits, ProcessSpec
from garden.errors import (
    ConflictError,
    ContainerNotFoundError,
    ContainerStoppedError,
    GardenError,
    InternalError,
    InvalidRequestError,
    ProcessIdInUseError,
)
from garden.events import schema as ev
from garden.events.journal import Journal, Pending
from garden.events.state import ContainerState, ServerState
from garden.linux.plan import (
    Bandwidth,
    FirewallRule,
    LimitChange,
    PortMap,
    SpawnedProcess,
    Started,
)

log = logging.getLogger("garden.container")

# Bound on how long tearing a container down may take once started, even when the caller is
# gone or the server is shutting down.
DESTROY_DEADLINE = 60.0
# How long a stop waits for the monitors of killed processes to report their exits.
PROCESS_EXIT_GRACE = 15.0


class Command(msgspec.Struct, frozen=True, kw_only=True):
    origin: ev.Origin = ev.Origin()


class SetProperty(Command, frozen=True):
    key: str
    value: str


class DeleteProperty(Command, frozen=True):
    key: str


class SetGraceTime(Command, frozen=True):
    grace_time: float


class Stop(Command, frozen=True):
    kill: bool = False


class Destroy(Command, frozen=True):
    reason: Literal["request", "grace"] = "request"


class RunProcess(Command, frozen=True):
    spec: ProcessSpec
    process_id: str


class MapPort(Command, frozen=True):
    """Forward `host_port` (already taken from the pool by the supervisor) to the container."""

    host_port: int
    container_port: int


class AllowOut(Command, frozen=True):
    rule: FirewallRule


class LimitBandwidth(Command, frozen=True):
    """Change the bandwidth limit; answers the limit in force afterwards (None: unlimited)."""

    request: BandwidthLimits


class SetLimits(Command, frozen=True):
    """Apply a limits request (checked already); the answer is the `Limits` in force."""

    limits: Limits


class HandleOom(Command, frozen=True):
    """Sent by the actor's own OOM watcher: stop the container and record the OOM."""


AnyCommand = (
    SetProperty
    | DeleteProperty
    | SetGraceTime
    | Stop
    | Destroy
    | RunProcess
    | MapPort
    | AllowOut
    | LimitBandwidth
    | SetLimits
    | HandleOom
)

_CGROUP_KINDS = frozenset({"memory", "cpu", "pids"})


@final
class ContainerActor:
    def __init__(
        self,
        handle: str,
        *,
        state: ServerState,
        journal: Journal,
        kernel: ContainerKernel,
        processes: ProcessKernel,
        networker: Networker,
        stop_timeout: float,
        on_exit: Callable[[str], None],
        on_gone: Callable[[str], None] = lambda handle: None,
    ) -> None:
        self.handle = handle
        self.mailbox: Mailbox[AnyCommand] = Mailbox()
        self._state = state
        self._journal = journal
        self._kernel = kernel
        self._process_kernel = processes
        self.processes = ProcessTable(handle, processes, journal)
        self._nursery: trio.Nursery | None = None
        self._networker = networker
        self._stop_timeout = stop_timeout
        self._on_exit = on_exit
        self._on_gone = on_gone  # the container left the state: its pool holdings are free
        self._tearing_down = False
        self._destroyed = False
        self._spawning: dict[str, trio.Event] = {}  # process ids whose spawn runs

    @property
    def record(self) -> ContainerState:
        return self._state.containers[self.handle]

    async def call(self, command: AnyCommand) -> object:
        return await self.mailbox.call(command)

    async def run(
        self,
        mode: Literal["create", "adopt"],
        origin: ev.Origin,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            if mode == "create":
                await self._create(origin)
            else:
                if self.record.phase == "active":
                    await self._sweep_unrecorded_processes()
                await self._settle_spawns()
            task_status.started()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                started = self.record.started()
                if self.record.phase == "active" and started is not None:
                    nursery.start_soon(self._watch_init, started)
                for state in self.record.processes.values():
                    process = self.processes.add(state.process_id, state.facts, state.exit_status)
                    if process.running:
                        nursery.start_soon(self.processes.watch, process)
                if self.record.phase == "active" or (
                    self.record.phase == "stopped" and "oom" not in self.record.events
                ):
                    nursery.start_soon(self._watch_oom)
                async for command, reply in self.mailbox.commands():
                    try:
                        if isinstance(command, RunProcess):
                            # Answered by the spawn task it starts: spawns run side by side.
                            await self._start_process(command, reply)
                        else:
                            reply.succeed(await self._handle(command))
                    except GardenError as exc:
                        reply.fail(exc)
                    except Exception as exc:
                        log.exception("command-failed handle=%s command=%r", self.handle, command)
                        error = InternalError(f"{type(exc).__name__}: {exc}", handle=self.handle)
                        error.__cause__ = exc
                        reply.fail(error)
                    if self._destroyed:
                        nursery.cancel_scope.cancel()
                        break
        finally:
            self.mailbox.close(lambda: ContainerNotFoundError(self.handle))
            self._on_exit(self.handle)

    async def _create(self, origin: ev.Origin) -> None:
        plan = self.record.plan()
        # The create runs to its end even when the client goes away: the intent is logged,
        # and a half-made container must be either finished or undone, never abandoned.
        with trio.CancelScope(shield=True):
            try:
                started = await self._kernel.create(plan)
                try:
                    await self._networker.setup(plan, started, self.record.wiring())
                    if plan.disk is not None:
                        # The server's own writes (name files) are in: from now on, what is
                        # written into the container counts against its disk limit.
                        await self._kernel.set_disk_quota(plan, plan.disk)
                except BaseException:
                    await self._undo_create()
                    raise
                faults.reached("create:after-network")
                created = ev.ContainerCreated(
                    handle=self.handle, pid=started.pid, pid_start_time=started.pid_start_time
                )
                try:
                    limits = await self._limits_read_back()
                    await self._journal.record(created, *limits, origin=origin)
                except GardenError:
                    # Not recorded (the log's disk is full...): a container the log does not
                    # know as created must not be left running.
                    await self._undo_create(wired=True)
                    raise
            except BaseException as exc:
                reason = exc.message if isinstance(exc, GardenError) else repr(exc)
                try:
                    await self._journal.record(
                        ev.ContainerCreateFailed(handle=self.handle, reason=reason), origin=origin
                    )
                except GardenError:
                    # The failure cannot be logged either: the state still says "creating",
                    # which the next start undoes (Supervisor._recover_one).
                    log.warning("create-failed-unrecorded handle=%s", self.handle)
                    raise exc  # noqa: B904 (what failed first is what the client hears)
                self._on_gone(self.handle)
                raise
        log.info("create-finished handle=%s pid=%d", self.handle, started.pid)

    async def _sweep_unrecorded_processes(self) -> None:
        known = set(self.record.processes)
        for process_id in await self._process_kernel.sweep(self.record.plan(), known):
            log.warning("process-swept handle=%s process_id=%s", self.handle, process_id)
            await self._journal.record(
                ev.ResourceSwept(kind="process", name=f"{self.handle}/{process_id}")
            )

    async def _undo_create(self, *, wired: bool = False) -> None:
        """The container started but could not be wired (the network set-up released its own
        part already), or its creation could not be recorded (`wired`: its network too):
        take it down again."""
        try:
            with trio.fail_after(DESTROY_DEADLINE):
                await self._kernel.destroy(self.record.plan())
                if wired:
                    await self._networker.teardown(self.record.plan(), self.record.wiring())
        except (GardenError, OSError, trio.TooSlowError):
            log.exception("create-undo-failed handle=%s", self.handle)

    async def _watch_init(self, started: Started) -> None:
        await self._kernel.wait_exit(started)
        if self._tearing_down or self.record.phase != "active":
            return
        log.warning("init-exited handle=%s pid=%d", self.handle, started.pid)
        await self._journal.record_until_written(
            ev.ContainerStopped(handle=self.handle, reason="init-exited")
        )

    async def _limits_read_back(self) -> list[ev.AnyEvent]:
        """The create-time cgroup limits as the kernel holds them (rounded), to record."""
        kinds = lim.kinds_of(self.record.limits) & _CGROUP_KINDS
        if not kinds:
            return []
        try:
            kernel = await self._kernel.set_limits(self.record.plan(), LimitChange())
        except GardenError as exc:
            log.warning("limits-read-back-failed handle=%s error=%s", self.handle, exc)
            return []
        in_force = lim.with_kernel_values(self.record.limits, kernel, kinds)
        return [ev.LimitsSet(handle=self.handle, limits=lim.only_kinds(in_force, kinds))]

    async def _watch_oom(self) -> None:
        await self._kernel.wait_oom(self.record.plan())
        try:
            await self.mailbox.call(HandleOom())
        except GardenError:
            pass  # the actor is gone (destroyed meanwhile)

    async def _handle(self, command: AnyCommand) -> object:
        h, origin = self.handle, command.origin
        match command:
            case SetProperty(key=key, value=value):
                bounds.check_property_change(self.record.properties, key, value, handle=h)
                await self._journal.record(
                    ev.PropertySet(handle=h, key=key, value=value), origin=origin
                )
            case DeleteProperty(key=key):
                await self._journal.record(ev.PropertyDeleted(handle=h, key=key), origin=origin)
            case SetGraceTime(grace_time=grace):
                await self._journal.record(
                    ev.GraceTimeSet(handle=h, grace_time=grace), origin=origin
                )
            case Stop(kill=kill):
                await self._stop(kill, origin)
            case Destroy(reason=reason):
                await self._destroy(reason, origin)
            case MapPort(host_port=host_port, container_port=container_port):
                mapping = PortMap(host_port=host_port, container_port=container_port)
                await self._map_port(mapping, origin)
            case AllowOut(rule=rule):
                self._need_network()
                count = len(self.record.net_out) + 1
                bounds.check_count("net-out rules", count, bounds.MAX_NET_OUT, handle=h)
                await self._networker.allow_out(self.record.plan(), rule)
                await self._journal.record(ev.NetOutAllowed(handle=h, rule=rule), origin=origin)
            case LimitBandwidth(request=request):
                return await self._limit_bandwidth(request, origin)
            case SetLimits(limits=put):
                return await self._set_limits(put, origin)
            case HandleOom():
                await self._handle_oom()
        return None

    async def _start_process(self, command: RunProcess, reply: Reply) -> None:
        """Check and reserve the process id here, in the mailbox's order, then spawn in a task
        of the actor's nursery that settles `reply`: a spawn (40-85 ms of conmon and runc) holds
        up neither the other spawns nor the container's other commands. Stop, destroy and an
        OOM wait for the spawns in flight (`_wait_spawns`) before they tear anything down."""
        process_id = command.process_id
        record = self.record
        started = record.started()
        if record.phase != "active" or started is None:
            raise ContainerStoppedError(
                f"container {self.handle} is {record.phase}: no new processes", handle=self.handle
            )
        count = len(self.processes.running()) + 1
        bounds.check_count("running processes", count, bounds.MAX_PROCESSES, handle=self.handle)
        previous = self.processes.find(process_id)
        if process_id in self._spawning or (previous is not None and previous.running):
            raise ProcessIdInUseError(
                f"process id {process_id!r} is in use", handle=self.handle, process_id=process_id
            )
        if previous is not None:
            await self._process_kernel.cleanup(previous.facts)
            self.processes.forget(process_id)
        assert self._nursery is not None
        self._spawning[process_id] = trio.Event()
        self._nursery.start_soon(self._spawn, command, started, reply)

    async def _spawn(self, command: RunProcess, started: Started, reply: Reply) -> None:
        """Spawn one process and record it. Its ProcessSpawning record is written while the
        runtime starts it (`announce`), so the process id can be answered once the pid is
        reported; ProcessStarted with the pids follows without being waited for (it is
        durable before ProcessExited, which comes after it). A crash before ProcessSpawning
        is durable leaves a process dir the log does not know (`_sweep_unrecorded_processes`),
        one after it a spawn the next start settles from the pid files (`_settle_spawns`)."""
        spec, process_id = command.spec, command.process_id
        record = self.record
        if not spec.user and record.default_user:
            spec = msgspec.structs.replace(spec, user=record.default_user)
        if not spec.dir and record.default_dir:
            spec = msgspec.structs.replace(spec, dir=record.default_dir)
        args = [spec.path, *spec.args]
        announced: list[Pending] = []

        def announce(planned: SpawnedProcess) -> None:
            spawning = ev.ProcessSpawning(
                handle=self.handle, process_id=process_id, facts=planned, args=args
            )
            announced.append(self._journal.submit(spawning, origin=command.origin))

        try:
            try:
                facts = await self._process_kernel.spawn(
                    record.plan(),
                    started,
                    spec,
                    process_id,
                    container_env=record.env,
                    privileged_container=record.uid_base is None,
                    announce=announce,
                )
            except BaseException as exc:
                if announced:  # the log says it is starting: it must also say it did not
                    with trio.CancelScope(shield=True):
                        await self._record_spawn_failed(announced[0], command, exc)
                raise
            faults.reached("process:after-spawn")
            # Recorded and watched even if the server is stopping meanwhile: a process runs
            # only with its spawn in the log (or it is swept at the next start).
            with trio.CancelScope(shield=True):
                event = ev.ProcessStarted(
                    handle=self.handle, process_id=process_id, facts=facts, args=args
                )
                pids: Pending | None = None
                try:
                    if announced:
                        await announced[0].wait()  # durable: the process id may be told
                        pids = self._journal.submit(event, origin=command.origin, lazy=True)
                    else:  # a kernel that announces nothing: the old way, one record
                        await self._journal.record(event, origin=command.origin)
                except GardenError:
                    # Not recorded (the log's disk is full...): the process must not run on
                    # unknown to the log and to every later request.
                    await self._process_kernel.cleanup(facts)
                    raise
                process = self.processes.add(process_id, facts, None)
                assert self._nursery is not None
                self._nursery.start_soon(self.processes.watch, process, pids)
            log.info(
                "process-started handle=%s process_id=%s pid=%d",
                self.handle,
                process_id,
                facts.pid,
            )
            reply.succeed(process_id)
        except GardenError as exc:
            reply.fail(exc)
        except Exception as exc:
            log.exception("spawn-failed handle=%s process_id=%s", self.handle, process_id)
            error = InternalError(f"{type(exc).__name__}: {exc}", handle=self.handle)
            error.__cause__ = exc
            reply.fail(error)
        finally:
            self._spawning.pop(process_id).set()
            reply.fail(ContainerNotFoundError(self.handle))  # cancelled: a no-op once settled

    async def _record_spawn_failed(
        self, spawning: Pending, command: RunProcess, exc: BaseException
    ) -> None:
        """After a failed spawn whose ProcessSpawning was queued: ProcessSpawnFailed, with
        the request's origin, if the former was written (else the log knows nothing of it). If
        this cannot be written either, the next start finds no pid file and records it then."""
        process_id = command.process_id
        try:
            await spawning.wait()
        except GardenError:
            return
        reason = exc.message if isinstance(exc, GardenError) else type(exc).__name__
        try:
            await self._journal.record(
                ev.ProcessSpawnFailed(handle=self.handle, process_id=process_id, reason=reason),
                origin=command.origin,
            )
        except GardenError as e:
            log.warning("spawn-failure-unrecorded handle=%s process_id=%s error=%s",
                        self.handle, process_id, e)  # fmt: skip

    async def _settle_spawns(self) -> None:
        """At start-up: the spawns the log announced (ProcessSpawning) but never settled, as
        the server stopped in between; each process either ran (its pid file says so: it is
        recorded as started now, and watched like any other) or did not."""
        for state in list(self.record.processes.values()):
            if state.facts.pids_known or state.exit_status is not None:
                continue
            facts = await self._process_kernel.find_announced(state.facts)
            if facts is None:
                reason = "the server stopped before the process started"
                log.warning("spawn-settled-failed handle=%s process_id=%s",
                            self.handle, state.process_id)  # fmt: skip
                await self._journal.record(
                    ev.ProcessSpawnFailed(
                        handle=self.handle, process_id=state.process_id, reason=reason
                    )
                )
            else:
                log.info("spawn-settled-started handle=%s process_id=%s pid=%d",
                         self.handle, state.process_id, facts.pid)  # fmt: skip
                await self._journal.record(
                    ev.ProcessStarted(handle=self.handle, process_id=state.process_id, facts=facts)
                )

    async def _wait_spawns(self) -> None:
        """Until no spawn is in flight (each is bounded: `monitor.spawn` gives up after 60 s)."""
        while self._spawning:
            await next(iter(self._spawning.values())).wait()

    def _need_network(self) -> None:
        if self.record.network() is None:
            raise InvalidRequestError(
                "the container has no network (it was made before networking)",
                handle=self.handle,
            )

    async def _map_port(self, mapping: PortMap, origin: ev.Origin) -> None:
        self._need_network()
        count = len(self.record.mapped_ports) + 1
        bounds.check_count("port mappings", count, bounds.MAX_NET_IN, handle=self.handle)
        plan = self.record.plan()
        await self._networker.map_port(plan, mapping)
        faults.reached("net:after-map")
        try:
            await self._journal.record(
                ev.NetInMapped(
                    handle=self.handle,
                    host_port=mapping.host_port,
                    container_port=mapping.container_port,
                ),
                origin=origin,
            )
        except BaseException:
            # Not recorded, so not in force: the mapping must not outlive this answer.
            with trio.CancelScope(shield=True):
                try:
                    await self._networker.unmap_port(plan, mapping)
                except GardenError:
                    log.exception("net-in-undo-failed handle=%s", self.handle)
            raise

    async def _limit_bandwidth(
        self, request: BandwidthLimits, origin: ev.Origin
    ) -> Bandwidth | None:
        self._need_network()
        current = self.record.bandwidth
        new = bandwidth_after(request, current)
        if new == current:
            return current
        await self._networker.limit_bandwidth(self.record.plan(), current, new)
        faults.reached("net:after-limit")
        await self._journal.record(
            ev.BandwidthLimitSet(
                handle=self.handle,
                rate=new.rate if new else 0,
                burst=new.burst if new else 0,
            ),
            origin=origin,
        )
        return new

    async def _set_limits(self, put: Limits, origin: ev.Origin) -> Limits:
        c = self.record
        new = lim.merge(c.limits, put)
        changed = {k for k in lim.kinds_of(put) if getattr(new, k) != getattr(c.limits, k)}
        if not changed:
            return c.limits
        plan = c.plan()
        if "disk" in changed:
            quota = lim.disk_quota(new.disk)
            has_hard = quota.bytes is not None or quota.inodes is not None
            if not c.has_own_layer and has_hard:
                raise ConflictError(
                    "hard disk limits need a filesystem of the container's own, which is made "
                    "only when the container is created with limits.disk",
                    handle=self.handle,
                )
            if c.has_own_layer and not has_hard:
                raise ConflictError(
                    "the hard disk limit set at create can be raised or lowered, not removed",
                    handle=self.handle,
                )
            if c.has_own_layer and quota != lim.disk_quota(c.limits.disk):
                await self._kernel.set_disk_quota(plan, quota)
                faults.reached("limits:after-disk")
        cgroup_kinds = changed & _CGROUP_KINDS
        if cgroup_kinds:
            target = lim.resource_limits(new)
            change = LimitChange(
                **{
                    field: getattr(target, field)
                    for kind, field in (
                        ("memory", "memory_bytes"),
                        ("cpu", "cpu_shares"),
                        ("pids", "pids_max"),
                    )
                    if kind in cgroup_kinds
                }
            )
            kernel = await self._kernel.set_limits(plan, change)
            faults.reached("limits:after-cgroup")
            new = lim.with_kernel_values(new, kernel, cgroup_kinds)
        await self._journal.record(
            ev.LimitsSet(handle=self.handle, limits=lim.only_kinds(new, changed)), origin=origin
        )
        log.info("limits-set handle=%s kinds=%s", self.handle, ",".join(sorted(changed)))
        return self.record.limits

    async def _handle_oom(self) -> None:
        c = self.record
        if "oom" in c.events or c.phase not in ("active", "stopped"):
            return
        log.warning("oom handle=%s phase=%s", self.handle, c.phase)
        if c.phase == "active":
            self._tearing_down = True
            try:
                await self._wait_spawns()
                await self._kernel.stop(c.plan(), kill=True, timeout=0)
                await self.processes.wait_all_exited(timeout=PROCESS_EXIT_GRACE)
            finally:
                self._tearing_down = False
        await self._journal.record(ev.ContainerStopped(handle=self.handle, reason="oom"))

    async def _stop(self, kill: bool, origin: ev.Origin) -> None:
        if self.record.phase == "stopped":
            return
        self._tearing_down = True
        try:
            await self._wait_spawns()
            await self._kernel.stop(self.record.plan(), kill=kill, timeout=self._stop_timeout)
            # Their monitors report each exit; the stop answers once every one is recorded.
            await self.processes.wait_all_exited(timeout=PROCESS_EXIT_GRACE)
            await self._journal.record(
                ev.ContainerStopped(handle=self.handle, reason="request"), origin=origin
            )
        finally:
            self._tearing_down = False

    async def _destroy(self, reason: Literal["request", "grace"], origin: ev.Origin) -> None:
        self._tearing_down = True
        log.info("destroy-started handle=%s reason=%s", self.handle, reason)
        with trio.CancelScope(shield=True), trio.fail_after(DESTROY_DEADLINE):
            await self._wait_spawns()
            if self.record.phase != "destroying":
                await self._journal.record(
                    ev.ContainerDestroyStarted(handle=self.handle, reason=reason), origin=origin
                )
            await self._kernel.destroy(self.record.plan())
            for process in self.processes.all():
                await self._process_kernel.cleanup(process.facts)
            await self._networker.teardown(self.record.plan(), self.record.wiring())
            await self._journal.record(ev.ContainerDestroyed(handle=self.handle), origin=origin)
            self._on_gone(self.handle)
        self._destroyed = True
        log.info("destroy-finished handle=%s", self.handle)
