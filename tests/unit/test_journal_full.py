"""The event log refusing a write (its disk full) in the middle of a command: whatever the
kernel already did for it is undone, the caller gets an error that says the disk is full, and
nothing runs that the log does not know of."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from garden.api import ProcessSpec
from garden.errors import GardenError, InsufficientStorageError, exhaustion_of
from garden.events import schema as ev
from garden.events.log import EventLog
from tests.unit.fakes import FakeKernel, FakeProcesses
from tests.unit.test_supervisor import ORIGIN, make_config, running, spec


def refuse(
    log: EventLog, event_type: type[ev.Event], refusing: trio.Event | None = None
) -> list[int]:
    """Make `log` fail with ENOSPC every batch holding an `event_type`; counts the refusals
    (and sets `refusing` at the first)."""
    real = log.append
    refused: list[int] = []

    def append(batch: Sequence[tuple[ev.AnyEvent, ev.Origin]], now: float) -> list[ev.Record]:
        if any(isinstance(event, event_type) for event, _ in batch):
            refused.append(1)
            if refusing is not None:
                refusing.set()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(batch, now)

    log.append = append  # type: ignore[method-assign]
    return refused


def assert_disk_full(error: GardenError) -> None:
    assert isinstance(exhaustion_of(error), InsufficientStorageError), error


async def test_unrecorded_process_is_killed_when_process_spawning_cannot_be_logged(
    tmp_path: Path,
) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        await sup.create(spec(handle="c"), ORIGIN)
        refused = refuse(log, ev.ProcessSpawning)
        with pytest.raises(GardenError) as caught:
            await sup.run_process("c", ProcessSpec(path="sleep"), ORIGIN)
        assert refused
        assert_disk_full(caught.value)
        processes = sup.process_kernel
        assert isinstance(processes, FakeProcesses)
        assert list(processes.cleaned) == list(processes.spawned), "spawned but unrecorded"
        assert sup.info("c").process_ids == []


async def test_a_process_whose_pids_cannot_be_logged_runs_and_its_exit_is_recorded(
    tmp_path: Path,
) -> None:
    """ProcessStarted is not waited for (ProcessSpawning made the id durable): when it cannot
    be written, the process still runs and its exit is recorded; the log then holds the
    spawn without pids, which the next start settles from the pid files."""
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        await sup.create(spec(handle="c"), ORIGIN)
        refusing = trio.Event()
        refused = refuse(log, ev.ProcessStarted, refusing)
        process = await sup.run_process("c", ProcessSpec(path="sleep"), ORIGIN)
        assert sup.info("c").process_ids == [process.process_id]
        await refusing.wait()  # written alone (after LAZY_WAIT: nothing else came) and refused
        processes = sup.process_kernel
        assert isinstance(processes, FakeProcesses)
        [facts] = processes.spawned.values()
        processes.finish(facts, 3)
        assert await process.wait() == 3
        assert refused
        types = [type(r.event) for r in log.records()]
        assert types[-2:] == [ev.ProcessSpawning, ev.ProcessExited]
        assert sup.state.containers["c"].processes[process.process_id].exit_status == 3
        assert processes.cleaned == []


async def test_container_is_undone_when_container_created_cannot_be_logged(
    tmp_path: Path,
) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        refused = refuse(log, ev.ContainerCreated)
        with pytest.raises(GardenError) as caught:
            await sup.create(spec(handle="c"), ORIGIN)
        assert refused
        assert_disk_full(caught.value)
        assert kernel.live == {}, "the kernel's container outlived its failed create"
        assert "c" not in sup.state.containers
        log.append = EventLog.append.__get__(log)  # type: ignore[method-assign]
        assert await sup.create(spec(handle="c"), ORIGIN) == "c"
