"""`LinuxProcesses`: the real `ProcessKernel` — runs a process in a container under conmon,
and gives back its exit status, its output log, its stdin, signals and terminal size.

Each process lives in `<container_path>/processes/<process_id>/` (the conmon bundle: the OCI
process.json, the k8s-file output log, the exit file). Everything a later call needs is in the
`SpawnedProcess` facts, which the actors record in the event log, so a process started before a
server crash is found again after it.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import final

import trio

from garden.api import ProcessSpec
from garden.errors import ProcessIdInUseError
from garden.linux import monitor, output, process_spec
from garden.linux.oci import caps_from_mask
from garden.linux.plan import ContainerPlan, SpawnedProcess, Started
from garden.linux.proc import capability_bounding_mask
from garden.linux.runtime import Runtime


@final
class LinuxProcesses:
    def __init__(self, *, runtime: Runtime, socket_dir: Path, watcher: output.LogWatcher) -> None:
        self.runtime = runtime
        self.socket_dir = socket_dir
        self.watcher = watcher
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
    ) -> SpawnedProcess:
        pdir = self.process_dir(plan, process_id)
        if pdir.exists():
            raise ProcessIdInUseError(
                f"process id {process_id!r} is in use", handle=plan.handle, process_id=process_id
            )
        size = spec.tty_size()
        process = await trio.to_thread.run_sync(
            lambda: process_spec.prepare_process(
                f"/proc/{started.pid}/root",
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
        )
        return await monitor.spawn(
            runtime=self.runtime.exe,
            runtime_root=self.runtime.root,
            container_id=plan.container_id,
            process_dir=pdir,
            process=process,
            socket_dir=self.socket_dir,
            stdin=spec.stdin or size is not None,
        )

    async def wait_exit(self, facts: SpawnedProcess) -> int | None:
        """The exit status once the process is gone; None when its monitor vanished without
        writing one."""
        try:
            return await monitor.wait_exit(facts)
        except monitor.MonitorLostError:
            return None

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
        start = 0
        if replay_bytes is not None:
            start = await trio.to_thread.run_sync(output.tail_offset, facts.log_path, replay_bytes)
        async with aclosing(
            self.watcher.follow(facts.log_path, facts.exit_path, start_offset=start)
        ) as chunks:
            yield chunks

    async def cleanup(self, facts: SpawnedProcess) -> None:
        await monitor.cleanup(facts)

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
