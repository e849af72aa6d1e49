"""The event log refusing a write (its disk full) in the middle of a command: whatever the
kernel already did for it is undone, the caller gets an error that says the disk is full, and
nothing runs that the log does not know of."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

import pytest

from garden.api import ProcessSpec
from garden.errors import GardenError, InsufficientStorageError, exhaustion_of
from garden.events import schema as ev
from garden.events.log import EventLog
from tests.unit.fakes import FakeKernel, FakeProcesses
from tests.unit.test_supervisor import ORIGIN, make_config, running, spec


def refuse(log: EventLog, event_type: type[ev.Event]) -> list[int]:
    """Make `log` fail with ENOSPC every batch holding an `event_type`; counts the refusals."""
    real = log.append
    refused: list[int] = []

    def append(batch: Sequence[tuple[ev.AnyEvent, ev.Origin]], now: float) -> list[ev.Record]:
        if any(isinstance(event, event_type) for event, _ in batch):
            refused.append(1)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(batch, now)

    log.append = append  # type: ignore[method-assign]
    return refused


def assert_disk_full(error: GardenError) -> None:
    assert isinstance(exhaustion_of(error), InsufficientStorageError), error


async def test_unrecorded_process_is_killed_when_process_started_cannot_be_logged(
    tmp_path: Path,
) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        await sup.create(spec(handle="c"), ORIGIN)
        refused = refuse(log, ev.ProcessStarted)
        with pytest.raises(GardenError) as caught:
            await sup.run_process("c", ProcessSpec(path="sleep"), ORIGIN)
        assert refused
        assert_disk_full(caught.value)
        processes = sup.process_kernel
        assert isinstance(processes, FakeProcesses)
        assert list(processes.cleaned) == list(processes.spawned), "spawned but unrecorded"
        assert sup.info("c").process_ids == []


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
