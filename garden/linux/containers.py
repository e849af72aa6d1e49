"""`LinuxContainers`: the real `ContainerKernel` (create, destroy, stop, probe, wait_exit),
composed of rootfs (overlay), oci (config.json), cgroups and runtime (runc/crun), plus finding
and releasing what a crash left behind.

Layout: the bundle is the container's own directory (`plan.container_path`, by convention
`<state_dir>/containers/<container_id>`): config.json, upper/, work/, rootfs/ (the overlay),
init.pid, started.json and the runtime's stderr. The container's cgroup is `plan.cgroup_path`
(by convention `<cgroup_parent>/<container_id>`), created by the runtime below the parent that
we create.

Stop signals every process in the container's cgroup except its init (catatonit), which stays,
so the container keeps its namespaces and its files can still be read and written; destroy
kills the init, which takes the whole pid namespace with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, final

import msgspec
import trio

from garden import faults
from garden.errors import CgroupError, ConflictError, GardenError, KernelError
from garden.linux import oci
from garden.linux.bind_mounts import checked_mounts
from garden.linux.cgroups import Cgroups
from garden.linux.cgroups.cpu import DEFAULT_SHARES
from garden.linux.disk import LayerQuota, LoopImageQuota
from garden.linux.images.store import LayerStore
from garden.linux.layer_usage import upper_usage
from garden.linux.plan import (
    ContainerPlan,
    ContainerStats,
    DiskQuota,
    LimitChange,
    ResourceLimits,
    Started,
)
from garden.linux.proc import (
    capability_bounding_mask,
    is_running,
    is_same_process,
    kill_and_wait,
    pid_start_time,
    signal_and_wait_all,
    wait_pid_exit,
)
from garden.linux.rootfs import (
    mount_overlay,
    mounts_under,
    prepare_lower,
    remove_tree,
    unmount_overlay,
)
from garden.linux.runtime import Runtime
from garden.linux.topdir import mark_topdir
from garden.linux.trash import Trash

Liveness = Literal["running", "stopped", "gone"]

log = logging.getLogger("garden.linux")

STARTED_FILE = "started.json"
_KILL_GRACE = 10.0  # how long SIGKILLed processes may take to go before we give up


class Leftovers(msgspec.Struct, frozen=True, kw_only=True):
    """Kernel resources found under our names, by container id."""

    runtime_ids: list[str]  # containers the runtime has state for under our --root
    cgroup_ids: list[str]  # children of our cgroup parent
    mount_ids: list[str]  # overlay mounts under <state_dir>/containers
    dir_ids: list[str]  # directories under <state_dir>/containers
    loop_ids: list[str] = []  # loop devices backed by a disk image of a container

    def container_ids(self) -> set[str]:
        return {
            *self.runtime_ids,
            *self.cgroup_ids,
            *self.mount_ids,
            *self.dir_ids,
            *self.loop_ids,
        }


@final
class LinuxContainers:
    def __init__(
        self,
        *,
        state_dir: Path,
        runtime: Runtime,
        cgroups: Cgroups,
        cache_dir: Path | None = None,
        cgroup_parent: str = "/garden",
        init_path: str = "/usr/bin/catatonit",
        tty_helper_path: str | None = None,
        cleanup_timeout: float = 10.0,
        use_run: bool = True,
        disk: LayerQuota | None = None,
        trash: Trash | None = None,
        images: LayerStore | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.containers_dir = self.state_dir / "containers"
        self.cache_dir = cache_dir if cache_dir is not None else self.state_dir / "lower-cache"
        self.runtime = runtime
        self.cgroups = cgroups
        self.cgroup_parent = "/" + cgroup_parent.strip("/")
        self.init_path = init_path
        self.tty_helper_path = tty_helper_path  # garden-monitor, mounted in for TTY processes
        self.cleanup_timeout = cleanup_timeout
        self.use_run = use_run  # `run -d` (one runtime call) instead of `create` + `start`
        self.disk: LayerQuota = disk if disk is not None else LoopImageQuota()
        self.trash = trash  # where bundles go to be deleted after the answer (None: at once)
        self.images = images if images is not None else LayerStore(self.state_dir / "images")
        self._parents_ready: set[str] = set()
        self._containers_dir_flagged = False  # `chattr +T` (garden.linux.topdir)
        self._failed_undos: set[str] = set()  # container ids whose create undo failed
        self.limits_changing_dir = self.state_dir / "limits-changing"
        self._limits_changing: set[str] | None = None  # read at the first reconcile
        self._swap_accounting: dict[str, bool] = {}
        self._allowed_caps = oci.caps_from_mask(capability_bounding_mask())

    # -- naming conventions (used to find leftovers without a plan) -------------------------

    def container_path_for(self, container_id: str) -> Path:
        return self.containers_dir / container_id

    def cgroup_path_for(self, container_id: str) -> str:
        return f"{self.cgroup_parent}/{container_id}"

    # -- ContainerKernel ------------------------------------------------------------------------

    async def create(self, plan: ContainerPlan) -> Started:
        await self._finish_failed_undos()
        cpath = Path(plan.container_path)
        cid = plan.container_id
        async with contextlib.AsyncExitStack() as undo:
            lower = await self._lower(plan)
            self._make_container_dir(cpath)
            undo.push_async_callback(self._undo, cid, "remove dir", remove_tree, cpath, self.trash)
            layer = None
            if plan.disk is not None:
                undo.push_async_callback(self._undo, cid, "release disk", self.disk.release, cpath)
                layer = await self.disk.create(cpath, plan.disk)
            undo.push_async_callback(self._undo, cid, "unmount", unmount_overlay, cpath)
            await mount_overlay(lower, cpath, plan.uid_base, layer)
            faults.reached("create:after-overlay")
            if plan.bind_mounts:
                mounts = await trio.to_thread.run_sync(checked_mounts, plan, str(cpath / "rootfs"))
                plan = msgspec.structs.replace(plan, bind_mounts=mounts)
            parent = posixpath.dirname(plan.cgroup_path.rstrip("/"))
            await self._ensure_parent(parent)
            spec = oci.container_spec(
                plan,
                init_path=self.init_path,
                tty_helper_path=self.tty_helper_path,
                allowed_caps=self._allowed_caps,
                swap_accounting=self._swap_accounting.get(parent, False),
            )
            self._write(cpath / "config.json", json.dumps(spec).encode())
            undo.push_async_callback(
                self._undo,
                cid,
                "release runtime",
                self._release_runtime,
                cid,
                cpath,
                plan.cgroup_path,
            )
            if self.use_run:
                pid = await self.runtime.run(cid, cpath)
            else:
                pid = await self.runtime.create(cid, cpath)
                await self.runtime.start(cid)
            faults.reached("create:after-runtime")
            start_time = pid_start_time(pid)
            if start_time is None:
                raise KernelError(f"start container {cid}", "its init exited at once")
            started = Started(pid=pid, pid_start_time=start_time)
            self._write(cpath / STARTED_FILE, msgspec.json.encode(started))
            undo.pop_all()
            return started
        raise AssertionError("unreachable")  # pragma: no cover

    async def _lower(self, plan: ContainerPlan) -> Path | list[Path]:
        """The overlay's lower dirs: the image's layers from the store, else the rootfs dir
        (each shifted to the container's uid base when unprivileged)."""
        if plan.layers:
            return await self.images.lower_dirs(plan.layers, plan.uid_base)
        return await prepare_lower(Path(plan.rootfs), plan.uid_base, self.cache_dir)

    async def destroy(self, plan: ContainerPlan) -> None:
        await self._finish_failed_undos()
        await self._release(plan.container_id, Path(plan.container_path), plan.cgroup_path)

    async def stop(self, plan: ContainerPlan, *, kill: bool, timeout: float) -> None:
        init = await self._init_of(plan.container_id, Path(plan.container_path))
        init_pid = init.pid if init is not None else -1
        sig = signal.SIGKILL if kill else signal.SIGTERM
        term_deadline = trio.current_time() + timeout
        hard_deadline = term_deadline + _KILL_GRACE
        while True:
            others = [p for p in self.cgroups.pids(plan.cgroup_path) if p != init_pid]
            if not others:
                return
            now = trio.current_time()
            if now >= hard_deadline:
                raise KernelError(f"stop {plan.container_id}", f"processes remain: {others}")
            if sig == signal.SIGTERM and now >= term_deadline:
                sig = signal.SIGKILL
            deadline = term_deadline if sig == signal.SIGTERM else hard_deadline
            with trio.move_on_at(deadline):
                await signal_and_wait_all(others, sig)

    async def probe(self, plan: ContainerPlan, started: Started | None) -> Liveness:
        """The recorded init (pid + start time, from /proc: a pid is reused only with another
        start time) decides; the runtime is asked (`runc state`, a process of ~7 ms) only when
        no init was recorded."""
        cid = plan.container_id
        if started is not None:
            if is_running(started.pid, started.pid_start_time):
                return "running"
        else:
            state = await self.runtime.state(cid) or {}
            if state.get("status") == "running" and state.get("pid"):
                return "running"
        if self._has_resources(cid, plan):
            return "stopped"
        return "gone"

    async def wait_exit(self, started: Started) -> None:
        await wait_pid_exit(started.pid, started.pid_start_time)

    # -- limits and figures (ResourceKernel) ----------------------------------------------------

    async def set_limits(self, plan: ContainerPlan, change: LimitChange) -> ResourceLimits:
        self._mark_limits_changing(plan.container_id)
        return await self.cgroups.set_limits(plan.cgroup_path, change)

    async def set_disk_quota(self, plan: ContainerPlan, quota: DiskQuota) -> None:
        if plan.disk is None:
            raise ConflictError(
                "the container was created without a disk limit, so its files are not on a "
                "filesystem of its own; give limits.disk when creating it",
                handle=plan.handle,
            )
        self._mark_limits_changing(plan.container_id)
        await self.disk.limit(Path(plan.container_path), quota)

    async def reconcile_limits(self, plan: ContainerPlan) -> list[str]:
        """Only containers marked since the last start (`_mark_limits_changing`) are read:
        three cgroup reads and a statvfs for each of 1,000 containers cost more than a
        second at a restart."""
        if self._limits_changing is None:
            try:
                self._limits_changing = set(os.listdir(self.limits_changing_dir))
            except FileNotFoundError:
                self._limits_changing = set()
        if plan.container_id not in self._limits_changing:
            await trio.lowlevel.checkpoint()
            return []
        corrected = await self._reconcile_limits(plan)
        self._limits_changing.discard(plan.container_id)
        self._unmark_limits_changing(plan.container_id)
        return corrected

    def _mark_limits_changing(self, cid: str) -> None:
        """A limit of `cid` is about to change in the kernel: until the next start has
        compared it with the log, a crash may have left the kernel ahead of the log. A file
        per container in `limits-changing/` (a process crash keeps it; a host crash takes
        the cgroups too)."""
        try:
            self.limits_changing_dir.mkdir(mode=0o700, exist_ok=True)
            (self.limits_changing_dir / cid).touch()
        except OSError as e:
            raise KernelError(f"mark the limits of {cid} as changing", e) from e

    def _unmark_limits_changing(self, cid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.limits_changing_dir / cid).unlink()

    async def _reconcile_limits(self, plan: ContainerPlan) -> list[str]:
        try:
            # Three small reads of cgroupfs: quicker than a hop to a worker thread.
            have = self.cgroups.limits(plan.cgroup_path)
        except CgroupError:
            if self.cgroups.exists(plan.cgroup_path):
                raise
            return []  # its init is gone and the cgroup with it: nothing holds a limit
        want = plan.resources
        change = LimitChange(
            **{
                field: getattr(want, field)
                for field, wanted, held in (
                    ("memory_bytes", want.memory_bytes, have.memory_bytes),
                    ("cpu_shares", want.cpu_shares or DEFAULT_SHARES, have.cpu_shares),
                    ("pids_max", want.pids_max, have.pids_max),
                )
                if wanted != held
            }
        )
        corrected = [
            kind
            for kind, field in (
                ("memory", "memory_bytes"),
                ("cpu", "cpu_shares"),
                ("pids", "pids_max"),
            )
            if getattr(change, field) is not msgspec.UNSET
        ]
        if corrected:
            await self.cgroups.set_limits(plan.cgroup_path, change)
        else:
            await trio.lowlevel.checkpoint()
        if plan.disk is not None:
            # Idempotent: a quota already in force changes nothing (a few statvfs calls).
            await self.disk.limit(Path(plan.container_path), plan.disk)
        return corrected

    async def stats(self, plan: ContainerPlan) -> ContainerStats:
        # A dozen reads of cgroup files and a statvfs (or a walk of the upper dir): off the
        # event loop, so a scrape of many containers does not stall other requests.
        return await trio.to_thread.run_sync(self._stats_sync, plan)

    def _stats_sync(self, plan: ContainerPlan) -> ContainerStats:
        cgroup = self.cgroups.stats(plan.cgroup_path)
        cpath = Path(plan.container_path)
        usage = self.disk.usage(cpath) if plan.disk else upper_usage(cpath / "upper")
        disk = {} if usage is None else msgspec.structs.asdict(usage)
        return msgspec.structs.replace(cgroup, disk=disk)

    async def wait_oom(self, plan: ContainerPlan) -> None:
        """Return once the kernel has OOM-killed a process of the container (at once if it
        already has: an OOM while the server was down). Waits on the kernel's notification."""
        path = plan.cgroup_path
        try:
            watch = self.cgroups.open_oom_watch(path)
        except CgroupError as e:
            log.warning("oom-watch-unavailable cgroup=%s error=%s", path, e)
            await trio.sleep_forever()
        try:
            if self.cgroups.oom_kills(path) or await watch.wait_oom():
                return
        finally:
            watch.close()
        await trio.sleep_forever()  # the cgroup is gone: nothing left to watch

    def _has_resources(self, cid: str, plan: ContainerPlan) -> bool:
        return (
            self.runtime.knows(cid)
            or Path(plan.container_path).exists()
            or self.cgroups.exists(plan.cgroup_path)
        )

    # -- leftovers after a crash ------------------------------------------------------------------

    async def list_leftovers(self) -> Leftovers:
        """Everything under our names: the caller releases the ids that no actor owns."""
        prefix = str(self.containers_dir) + "/"
        mounts = await trio.to_thread.run_sync(mounts_under, self.containers_dir)
        mount_ids = sorted({str(m)[len(prefix) :].split("/")[0] for m in mounts})
        try:
            dir_ids = sorted(e.name for e in os.scandir(self.containers_dir) if e.is_dir())
        except FileNotFoundError:
            dir_ids = []
        cgroup_ids = [posixpath.basename(c) for c in self.cgroups.children(self.cgroup_parent)]
        loops = await trio.to_thread.run_sync(self.disk.leftovers, self.containers_dir)
        return Leftovers(
            runtime_ids=self.runtime.container_ids(),
            cgroup_ids=cgroup_ids,
            mount_ids=[m for m in mount_ids if m and not m.startswith("/")],
            dir_ids=dir_ids,
            loop_ids=sorted(set(loops.values())),
        )

    async def release_leftover(self, container_id: str) -> None:
        """Release everything of `container_id` found by the naming conventions; idempotent."""
        await self._release(
            container_id, self.container_path_for(container_id), self.cgroup_path_for(container_id)
        )

    async def sweep(self, owned: set[str]) -> list[str]:
        """Release the leftovers of every container id not in `owned`; return those ids."""
        found = (await self.list_leftovers()).container_ids() - owned
        for container_id in sorted(found):
            log.warning("sweep-release container_id=%s", container_id)
            await self.release_leftover(container_id)
        return sorted(found)

    async def remove_cgroup_parent_if_empty(self) -> bool:
        self._parents_ready.discard(self.cgroup_parent)
        return await self.cgroups.remove_parent_if_empty(self.cgroup_parent)

    # -- steps ----------------------------------------------------------------------------------

    async def _release(self, cid: str, cpath: Path, cgroup_path: str) -> None:
        await self._release_runtime(cid, cpath, cgroup_path)
        faults.reached("destroy:after-runtime")
        await unmount_overlay(cpath)
        faults.reached("destroy:after-unmount")
        await self.disk.release(cpath)
        await remove_tree(cpath, self.trash)
        self._unmark_limits_changing(cid)

    async def _release_runtime(self, cid: str, cpath: Path, cgroup_path: str) -> None:
        """Kill the init (the kernel then kills its pid namespace), kill any straggler left in
        the cgroup, delete the runtime state (no --force: it sleeps 100 ms), remove the cgroup."""
        with trio.move_on_after(_KILL_GRACE) as scope:
            init = await self._init_of(cid, cpath)
            if init is not None:
                await kill_and_wait(init.pid, init.pid_start_time)
            stragglers = self.cgroups.pids(cgroup_path)
            if stragglers:
                await signal_and_wait_all(stragglers, signal.SIGKILL)
        if scope.cancelled_caught:
            raise KernelError(
                f"kill container {cid}", f"processes still alive after {_KILL_GRACE}s"
            )
        await self.runtime.delete(cid)
        await self.cgroups.remove(cgroup_path)

    async def _init_of(self, cid: str, cpath: Path) -> Started | None:
        """The container's init as recorded at start, else as the runtime reports it."""
        try:
            started = msgspec.json.decode((cpath / STARTED_FILE).read_bytes(), type=Started)
            if is_same_process(started.pid, started.pid_start_time):
                return started
        except (OSError, msgspec.DecodeError):
            pass
        state = await self.runtime.state(cid)
        pid = int(state.get("pid") or 0) if state else 0
        if pid <= 0 or state is None or state.get("status") == "stopped":
            return None
        start_time = pid_start_time(pid)
        return Started(pid=pid, pid_start_time=start_time) if start_time is not None else None

    async def _ensure_parent(self, parent: str) -> None:
        if parent in self._parents_ready or parent in ("", "/"):
            return
        await self.cgroups.ensure_parent(parent)
        self._swap_accounting[parent] = self.cgroups.has_swap_accounting(parent)
        self._parents_ready.add(parent)

    def _make_container_dir(self, cpath: Path) -> None:
        try:
            self.containers_dir.mkdir(parents=True, exist_ok=True)
            # The user namespace's root must be able to reach rootfs/ inside the bundle.
            os.chmod(self.containers_dir, 0o711)
            if not self._containers_dir_flagged:  # bundles go where nothing was just deleted
                mark_topdir(self.containers_dir)
                self._containers_dir_flagged = True
            cpath.mkdir(mode=0o711)
            os.chmod(cpath, 0o711)
        except OSError as e:
            raise KernelError(f"create container dir {cpath}", e) from e

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        try:
            path.write_bytes(data)
        except OSError as e:
            raise KernelError(f"write {path}", e) from e

    async def _undo(
        self, cid: str, what: str, fn: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        """One undo step of a failed create: shielded from cancellation, bounded in time; its
        own failure is logged so the create's original error is the one that propagates, and
        the container is released again later (`_finish_failed_undos`)."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.cleanup_timeout
            try:
                await fn(*args)
            except (GardenError, OSError) as e:
                log.warning("create-undo-failed step=%s args=%s error=%s", what, args, e)
                self._failed_undos.add(cid)
        if scope.cancelled_caught:
            log.warning("create-undo-timed-out step=%s args=%s", what, args)
            self._failed_undos.add(cid)

    async def _finish_failed_undos(self) -> None:
        """Release what the undo of a failed create could not (the cause, e.g. no descriptor
        or no disk space left, has often gone by the next create or destroy): nothing of it
        waits for the next start's sweep."""
        for cid in sorted(self._failed_undos):
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.cleanup_timeout
                try:
                    await self.release_leftover(cid)
                except (GardenError, OSError) as e:
                    log.warning("create-undo-retry-failed container_id=%s error=%s", cid, e)
                    continue
            if not scope.cancelled_caught:
                self._failed_undos.discard(cid)
                log.info("create-undo-finished container_id=%s", cid)
