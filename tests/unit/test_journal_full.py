"""The event log refusing a write (its disk full) in the middle of a command: whatever the
kernel already did for it is undone, the caller gets an error that says the disk is full, and
nothing runs that the log does not know of."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from garden.api import ProcessSpec
from garden.errors import GardenError, InsufficientStorageError, exhaustion_of
from garden.events import schema as ev
from garden.events.log import EventLog
from tests.unit.fakes import FakeKernel, FakeProcesses
from tests.unit.test_supervisor import ORIGIN, make_config, running, spec


def refuse(
    log: EventLog,
    event_type: type[ev.Event],
    refusing: trio.Event | None = None,
    times: int | None = None,
) -> list[int]:
    """Make `log` fail with ENOSPC every batch holding an `event_type` (the first `times`
    only, if given); counts the refusals (and sets `refusing` at the first)."""
    real = log.append
    refused: list[int] = []

    def append(batch: Sequence[tuple[ev.AnyEvent, ev.Origin]], now: float) -> list[ev.Record]:
        wanted = times is None or len(refused) < times
        if wanted and any(isinstance(event, event_type) for event, _ in batch):
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


async def test_an_exit_the_log_refuses_is_recorded_later_and_the_server_keeps_serving(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Regression: a refused ProcessExited (the log's disk full as a process exited) escaped
    the exit watch and took the container's actor, and with it the server, down. Now the
    status waits (no stream hears it before it is durable) and is written once it can be."""
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        await sup.create(spec(handle="c"), ORIGIN)
        process = await sup.run_process("c", ProcessSpec(path="sleep"), ORIGIN)
        refusing = trio.Event()
        refused = refuse(log, ev.ProcessExited, refusing, times=3)
        processes = sup.process_kernel
        assert isinstance(processes, FakeProcesses)
        [facts] = processes.spawned.values()
        processes.finish(facts, 3)
        await refusing.wait()
        assert process.running  # not told before it is written
        assert sup.info("c").process_ids == [process.process_id]  # still serving
        assert await process.wait() == 3  # written at the fourth try
        assert len(refused) == 3
        exits = [r.event for r in log.records() if isinstance(r.event, ev.ProcessExited)]
        assert [e.exit_status for e in exits] == [3]


async def test_an_init_death_the_log_refuses_is_recorded_later(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        await sup.create(spec(handle="c"), ORIGIN)
        refusing = trio.Event()
        refuse(log, ev.ContainerStopped, refusing, times=2)
        kernel.crash_init(sup.state.containers["c"].container_id)
        await refusing.wait()
        assert sup.info("c").state == "active"
        with trio.fail_after(10):  # (mock time: RETRY_EVERY twice)
            while sup.info("c").state != "stopped":
                await trio.sleep(0.1)
