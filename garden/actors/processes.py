"""The processes of one container, as its actor sees them: each has its facts (from the log)
and `wait()` for its exit status, which streams use; a watcher task per running process records
its exit status in the journal the moment its monitor reports it."""

from __future__ import annotations

import logging
from typing import final

import trio

from garden.actors.ports import ProcessKernel
from garden.errors import (
    GardenError,
    InternalError,
    ProcessNotFoundError,
    ServiceUnavailableError,
)
from garden.events import schema as ev
from garden.events.journal import Journal, Pending
from garden.linux.plan import SpawnedProcess

log = logging.getLogger("garden.process")

LOST_EXIT_STATUS = 255


@final
class LiveProcess:
    __slots__ = ("_exited", "exit_status", "facts", "process_id")

    def __init__(self, process_id: str, facts: SpawnedProcess, exit_status: int | None) -> None:
        self.process_id = process_id
        self.facts = facts
        self.exit_status = exit_status
        # Only a running process needs something to wait on. An adopted container brings
        # every process it ever ran, mostly long exited: 100,000 of them cost 1 s in Events.
        self._exited = trio.Event() if exit_status is None else None

    @property
    def running(self) -> bool:
        return self.exit_status is None

    def set_exited(self, exit_status: int) -> None:
        self.exit_status = exit_status
        if self._exited is not None:
            self._exited.set()

    async def wait(self) -> int:
        if self._exited is None:
            await trio.lowlevel.checkpoint()
        else:
            await self._exited.wait()
        assert self.exit_status is not None
        return self.exit_status


@final
class ProcessTable:
    """Live view of a container's processes, owned by its actor."""

    def __init__(self, handle: str, kernel: ProcessKernel, journal: Journal) -> None:
        self.handle = handle
        self._kernel = kernel
        self._journal = journal
        self._by_id: dict[str, LiveProcess] = {}

    def get(self, process_id: str) -> LiveProcess:
        process = self._by_id.get(process_id)
        if process is None:
            raise ProcessNotFoundError(
                f"unknown process: {process_id}", handle=self.handle, process_id=process_id
            )
        return process

    def find(self, process_id: str) -> LiveProcess | None:
        return self._by_id.get(process_id)

    def running(self) -> list[LiveProcess]:
        return [p for p in self._by_id.values() if p.running]

    def all(self) -> list[LiveProcess]:
        return list(self._by_id.values())

    def add(self, process_id: str, facts: SpawnedProcess, exit_status: int | None) -> LiveProcess:
        process = LiveProcess(process_id, facts, exit_status)
        self._by_id[process_id] = process
        return process

    def forget(self, process_id: str) -> None:
        self._by_id.pop(process_id, None)

    async def watch(self, process: LiveProcess, started: Pending | None = None) -> None:
        """Wait for the process to exit (also one that exited while the server was down) and
        record its status; `started` is its ProcessStarted record if that is still on its
        way (its failure is reported here: the next start finds the pids in its files)."""
        status = await self._kernel.wait_exit(process.facts)
        lost = status is None
        if status is None:
            log.warning(
                "process-monitor-lost handle=%s process_id=%s", self.handle, process.process_id
            )
            status = LOST_EXIT_STATUS
        exited = ev.ProcessExited(
            handle=self.handle, process_id=process.process_id, exit_status=status, lost=lost
        )
        with trio.CancelScope(shield=True):
            try:
                # After `started` in the log: in its batch, or a later one.
                written = self._journal.submit(exited)
            except ServiceUnavailableError:
                return  # stopping: the next start reads the exit file
            if started is not None:
                try:
                    await started.wait()
                except GardenError as e:
                    log.warning("process-started-unrecorded handle=%s process_id=%s error=%s",
                                self.handle, process.process_id, e)  # fmt: skip
            try:
                await written.wait()
                recorded = True
            except ServiceUnavailableError:
                return
            except InternalError:
                recorded = False
        # The log's disk is full: no stream hears the status before it is written (and the
        # server goes on serving meanwhile).
        if not recorded and await self._journal.record_until_written(exited) is None:
            return
        process.set_exited(status)
        log.info(
            "process-exited handle=%s process_id=%s status=%d",
            self.handle,
            process.process_id,
            status,
        )

    async def wait_all_exited(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            for process in self.running():
                await process.wait()
