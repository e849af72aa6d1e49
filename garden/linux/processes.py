"""`LinuxProcesses`: the real `ProcessKernel` — runs a process in a container under
garden-monitor (which execs a batch process itself where it can: `_join`) or conmon, and gives
back its exit status, its output log, its stdin, signals and terminal size.

Each process lives in `<container_path>/processes/<process_id>/` (the conmon bundle: the OCI
process.json, the output — raw `stdout`/`stderr` files and their `order` index, or for a TTY
and processes from before passthrough conmon's k8s-file `log` — and the exit file).
Everything a later call needs is in the `SpawnedProcess` facts, which the actors record in the
event log, so a process started before a server crash is found again after it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Literal, final

import trio

from garden.api import ProcessSpec
from garden.errors import KernelError, ProcessIdInUseError
from garden.linux import join_plan, monitor, oci, output, passthrough, process_spec
from garden.linux.cgroups import Cgroups
from garden.linux.join_plan import Join
from garden.linux.oci import caps_from_mask
from garden.linux.plan import ContainerPlan, SpawnedProcess, Started
from garden.linux.proc import capability_bounding_mask
from garden.linux.runtime import Runtime

log = logging.getLogger("garden.linux")

ProcessExec = Literal["auto", "runtime"]
# Joins kept (~1.7 KB each: a dozen paths). Regression: 4,096 of them made `just load`'s RSS
# climb +0.86 MiB/min (a container made and destroyed every 0.12 s, each leaving its join).
_JOINS_KEPT = 128


@final
class _Indexed:
    """An order index in use: by the running process (from spawn or recovery until its exit
    has been seen) and by each follower; closed when neither is left."""

    __slots__ = ("index", "refs", "running", "wd")

    def __init__(self, index: passthrough.OrderIndex, wd: int) -> None:
        self.index = index
        self.wd = wd
        self.refs = 0
        self.running = False


@final
class LinuxProcesses:
    def __init__(
        self,
        *,
        runtime: Runtime,
        socket_dir: Path,
        watcher: output.LogWatcher,
        log_format: monitor.LogFormat = "passthrough",
        output_cap: int = passthrough.DEFAULT_CAP,
        garden_monitor: str | None = None,
        cgroups: Cgroups | None = None,
        process_exec: ProcessExec = "auto",
    ) -> None:
        """`garden_monitor`: the garden-monitor binary for batch processes (None: conmon).
        `process_exec` "auto": garden-monitor execs a batch process into its container itself
        where it can (it needs `cgroups`, and for a container with seccomp the runtime's compiled
        filter, which crun keeps and runc does not); "runtime": the runtime's `exec` always."""
        self.runtime = runtime
        self.garden_monitor = garden_monitor
        self.cgroups = cgroups
        self.process_exec: ProcessExec = process_exec
        self._joins: dict[tuple[str, int, int], Join | None] = {}
        self.socket_dir = socket_dir
        self.watcher = watcher
        self.log_format: monitor.LogFormat = log_format
        self.output_cap = output_cap
        self._indexes: dict[str, _Indexed] = {}  # by process dir
        self.ceiling = process_spec.rlimit_ceiling()
        # What the server may grant: a privileged container's processes get all of it.
        self.allowed_caps = caps_from_mask(capability_bounding_mask())

    def process_dir(self, plan: ContainerPlan, process_id: str) -> Path:
        return Path(plan.container_path) / "processes" / process_id

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
        pdir = self.process_dir(plan, process_id)
        if pdir.exists():
            raise ProcessIdInUseError(
                f"process id {process_id!r} is in use", handle=plan.handle, process_id=process_id
            )
        size = spec.tty_size()
        root = f"/proc/{started.pid}/root"
        # In the trio thread: a few small reads in the container's root (~0.4 ms), less than
        # the two hops to a worker thread and back cost under load (0.5-1 ms), and the GIL
        # would serialise the parsing anyway.
        prepared = process_spec.prepare_process(
            root,
            path=spec.path,
            args=spec.args,
            container_env=container_env,
            env=spec.env,
            dir=spec.dir,
            user=spec.user,
            privileged=spec.privileged,
            privileged_container=privileged_container,
            allowed_caps=self.allowed_caps,
            limits=spec.rlimits,
            tty=size is not None,
            console_size=(size.rows, size.columns) if size else None,
            host_id_offset=0 if privileged_container else (plan.uid_base or 0),
            ceiling=self.ceiling,
        )
        process = prepared.process
        if size is not None and process_spec.has_executable(root, oci.TTY_HELPER):
            # crun sizes an exec'd terminal from outside once the process has exec'd, so a
            # program could see 0x0: garden-monitor --tty-wait runs first and waits for the size.
            helper = [oci.TTY_HELPER, "--tty-wait", prepared.executable]
            process = {**process, "args": [*helper, *process["args"]]}
        try:
            return await monitor.spawn(
                runtime=self.runtime.exe,
                runtime_root=self.runtime.root,
                container_id=plan.container_id,
                process_dir=pdir,
                process=process,
                socket_dir=self.socket_dir,
                stdin=spec.stdin or size is not None,
                log_format=self.log_format,
                garden_monitor=self.garden_monitor,
                # Indexed from before the first byte, held for the running process.
                before_start=lambda d: self._acquire(str(d), running=True, pin=True),
                announce=announce,
                join=self._join(plan, started),
                executable=prepared.executable,
            )
        except BaseException:
            self._release(str(pdir), running=True)
            raise

    def _join(self, plan: ContainerPlan, started: Started) -> Join | None:
        """How garden-monitor joins `plan`'s container to exec a process itself; None when
        the runtime's `exec` must (see `__init__`). Looked up once per init of a container
        (its cgroups and its filter stay as they are while it runs)."""
        if self.process_exec != "auto" or self.garden_monitor is None or self.cgroups is None:
            return None
        key = (plan.container_id, started.pid, started.pid_start_time)
        if key in self._joins:
            return self._joins[key]
        bpf = None
        join = None
        if oci.has_seccomp(plan):
            bpf = self.runtime.root / plan.container_id / "seccomp.bpf"  # crun's state
        if bpf is None or bpf.exists():
            join = Join(
                init_pid=started.pid,
                init_start_time=started.pid_start_time,
                namespaces=join_plan.namespace_flags(oci.namespaces(plan)),
                cgroup_procs=tuple(str(f) for f in self.cgroups.procs_files(plan.cgroup_path)),
                seccomp_bpf=None if bpf is None else str(bpf),
            )
        while len(self._joins) >= _JOINS_KEPT:  # the oldest first (a dict keeps the order)
            del self._joins[next(iter(self._joins))]
        self._joins[key] = join
        return join

    async def wait_exit(self, facts: SpawnedProcess) -> int | None:
        """The exit status once the process is gone; None when its monitor vanished without
        writing one. A passthrough process's order index is kept meanwhile (and loaded again
        after a restart of the server) and finished once it has exited."""
        if facts.log_format == "passthrough":
            try:
                self._acquire(facts.process_dir, running=True)
            except KernelError as e:  # its exit still counts: without an index, order degrades
                log.warning("order-index-failed dir=%s error=%s", facts.process_dir, e)
        try:
            return await monitor.wait_exit(facts)
        except monitor.MonitorLostError:
            return None
        finally:
            entry = self._indexes.get(facts.process_dir)
            if entry is not None and facts.exit_path.exists():
                entry.index.finish()
            self._release(facts.process_dir, running=True)

    def _acquire(
        self, process_dir: str, *, running: bool = False, pin: bool = False
    ) -> passthrough.OrderIndex:
        entry = self._indexes.get(process_dir)
        if entry is None:
            try:
                index = passthrough.OrderIndex(process_dir, cap=self.output_cap, pin=pin)
            except OSError as e:
                raise KernelError(f"open the output of {process_dir}", e) from e
            try:
                entry = _Indexed(index, self.watcher.add_index(index))
            except BaseException:
                index.close()
                raise
            self._indexes[process_dir] = entry
        if running:
            if entry.running:
                return entry.index
            entry.running = True
        entry.refs += 1
        return entry.index

    def _release(self, process_dir: str, *, running: bool = False) -> None:
        entry = self._indexes.get(process_dir)
        if entry is None or (running and not entry.running):
            return
        entry.running = entry.running and not running
        entry.refs -= 1
        if entry.refs <= 0:
            del self._indexes[process_dir]
            self.watcher.remove_index(entry.wd)
            entry.index.close()

    def exit_status(self, facts: SpawnedProcess) -> int | None:
        return monitor.read_exit_status(facts)

    def signal(self, facts: SpawnedProcess, signum: int) -> bool:
        return monitor.signal(facts, signum)

    def resize(self, facts: SpawnedProcess, rows: int, columns: int) -> bool:
        return monitor.resize(facts, rows, columns)

    async def open_stdin(self, facts: SpawnedProcess) -> trio.abc.SendStream:
        return await monitor.open_stdin(facts)

    @asynccontextmanager
    async def output(
        self, facts: SpawnedProcess, *, replay_bytes: int | None = None
    ) -> AsyncIterator[AsyncGenerator[output.Chunk, None]]:
        """The process's output from its start (or its last `replay_bytes`), then live, until
        it has exited and everything is read."""
        if facts.log_format == "passthrough":
            index = self._acquire(facts.process_dir)
            try:
                follow = self.watcher.follow_passthrough(
                    index, facts.exit_path, replay_bytes=replay_bytes
                )
                async with aclosing(follow) as chunks:
                    yield chunks
            finally:
                self._release(facts.process_dir)
            return
        start = 0
        if replay_bytes is not None:
            start = await trio.to_thread.run_sync(output.tail_offset, facts.log_path, replay_bytes)
        async with aclosing(
            self.watcher.follow(facts.log_path, facts.exit_path, start_offset=start)
        ) as chunks:
            yield chunks

    async def cleanup(self, facts: SpawnedProcess) -> None:
        self._release(facts.process_dir, running=True)
        await monitor.cleanup(facts)

    async def find_announced(self, planned: SpawnedProcess) -> SpawnedProcess | None:
        return await trio.to_thread.run_sync(monitor.find_announced, planned)

    async def sweep(self, plan: ContainerPlan, known: set[str]) -> list[str]:
        """Kill and remove the processes of this container that the log does not know (a crash
        between their spawn and their ProcessStarted record); return their ids."""
        root = Path(plan.container_path) / "processes"
        try:
            found = [p for p in root.iterdir() if p.is_dir() and p.name not in known]
        except FileNotFoundError:
            return []
        for pdir in found:
            await trio.to_thread.run_sync(monitor.kill_unrecorded, pdir)
            await trio.to_thread.run_sync(shutil.rmtree, pdir, True)
        if found:  # (the server's start sweeps the whole socket dir once)
            self.sweep_socket_dir()
        return [p.name for p in found]

    def sweep_socket_dir(self) -> None:
        """Remove conmon's socket links whose process dirs are gone (left by crashes)."""
        if not self.socket_dir.exists():
            return
        for link in self.socket_dir.iterdir():
            if link.is_symlink() and not link.exists():
                link.unlink(missing_ok=True)
            elif link.is_dir() and not link.is_symlink():
                shutil.rmtree(link, ignore_errors=True)
