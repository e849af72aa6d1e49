"""The journal: group commit, apply order, failures, cancellation, shutdown, followers."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from garden.errors import InternalError, ServiceUnavailableError
from garden.events.journal import LAZY_WAIT, RECENT, Journal
from garden.events.log import EventLog
from garden.events.schema import GraceTimeSet, Origin, PropertySet, Record

from .conftest import fill, prop


class Applied:
    """An apply function that remembers what it saw."""

    def __init__(self) -> None:
        self.seqs: list[int] = []

    def __call__(self, record: Record) -> None:
        self.seqs.append(record.seq)


@pytest.fixture
def applied() -> Applied:
    return Applied()


@pytest.fixture
async def journal(opened: EventLog, applied: Applied) -> AsyncIterator[Journal]:
    journal = Journal(opened, applied, clock=lambda: 42.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        yield journal
        await journal.aclose()


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


async def test_record_returns_durable_applied_records(
    journal: Journal, applied: Applied, opened: EventLog
) -> None:
    records = await journal.record(prop(1), prop(2), origin=Origin(request_id="r-1"))
    assert [r.seq for r in records] == [1, 2] == applied.seqs
    assert records[0].origin.request_id == "r-1" and records[0].time == 42.0
    assert list(opened.records()) == records and journal.last_seq == 2


async def test_concurrent_callers_share_fsyncs(
    journal: Journal, applied: Applied, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs = count_fsyncs(monkeypatch)
    results: dict[int, list[Record]] = {}

    async def caller(i: int) -> None:
        results[i] = await journal.record(prop(i), prop(i + 1000))

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(caller, i)

    assert len(fsyncs) < 200 and journal.stats().batches == len(fsyncs)
    assert applied.seqs == list(range(1, 401)), "applied once each, in seq order"
    for i, (first, second) in results.items():
        assert (first.event, second.event) == (prop(i), prop(i + 1000))
        assert second.seq == first.seq + 1, "one caller's events stay consecutive"
    stats = journal.stats()
    assert stats.records == 400 and stats.last_seq == 400 and stats.largest_batch > 2


async def test_write_failure_reaches_every_waiter_and_applies_nothing(
    journal: Journal, applied: Applied, opened: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    await journal.record(prop(0))

    real_write = os.write

    def disk_full(fd: int, data: memoryview) -> int:
        real_write(fd, data[:10])  # a partial line reaches the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    errors: list[BaseException] = []

    async def caller(i: int) -> None:
        with pytest.raises(InternalError, match="No space left") as caught:
            await journal.record(prop(i))
        errors.append(caught.value)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(caller, i)
    monkeypatch.undo()
    assert len(errors) == 20 and len({id(e) for e in errors}) == 20
    assert applied.seqs == [1] and journal.stats().write_errors >= 1
    # the failed writes left nothing behind and the journal still works:
    [record] = await journal.record(prop(7))
    assert record.seq == 2 and applied.seqs == [1, 2]
    assert [r.seq for r in opened.records()] == [1, 2]


async def test_unloggable_event_fails_only_its_caller(journal: Journal) -> None:
    with pytest.raises(InternalError, match=r"round trip|cannot be logged"):
        await journal.record(GraceTimeSet(handle="h", grace_time=float("inf")))
    assert (await journal.record(prop(1)))[0].seq == 1


async def test_cancelled_before_queueing_writes_nothing(journal: Journal) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await journal.record(prop(1))
    assert journal.last_seq == 0


async def test_cancelled_waiter_events_are_still_written(
    opened: EventLog, applied: Applied
) -> None:
    journal = Journal(opened, applied)
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(lambda: journal.record(prop(1)))
            await trio.testing.wait_all_tasks_blocked()  # queued, no writer yet
            scope.cancel()
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        await journal.aclose()
    assert applied.seqs == [1] and [r.event for r in opened.records()] == [prop(1)]


async def test_aclose_drains_queue_then_refuses(opened: EventLog, applied: Applied) -> None:
    journal = Journal(opened, applied)
    done: list[int] = []

    async def caller(i: int) -> None:
        await journal.record(prop(i))
        done.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(caller, i)
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(journal.run)
        await journal.aclose()
    assert sorted(done) == list(range(10)) and applied.seqs == list(range(1, 11))
    with pytest.raises(ServiceUnavailableError):
        await journal.record(prop(99))


async def test_aclose_deadline_finishes_batch_in_progress_and_fails_the_rest(
    opened: EventLog, applied: Applied, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = os.fsync

    def slow_fsync(fd: int) -> None:
        release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    journal = Journal(opened, applied)
    outcome: dict[str, object] = {}

    async def caller(name: str) -> None:
        try:
            outcome[name] = await journal.record(prop(len(outcome)))
        except ServiceUnavailableError as exc:
            outcome[name] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        nursery.start_soon(caller, "in-flight")
        await trio.sleep(0.05)  # the writer thread is now blocked in fsync
        nursery.start_soon(caller, "queued")
        await trio.testing.wait_all_tasks_blocked()
        threading.Timer(0.2, release.set).start()
        await journal.aclose(timeout=0.05)
    assert isinstance(outcome["in-flight"], list) and applied.seqs == [1]
    assert isinstance(outcome["queued"], ServiceUnavailableError)
    assert opened.last_seq == 1


async def test_apply_failure_stops_the_journal(opened: EventLog) -> None:
    def explode(record: Record) -> None:
        raise KeyError("bug in evolve")

    journal = Journal(opened, explode)
    with pytest.raises(ExceptionGroup) as group:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            with pytest.raises(InternalError, match="must restart"):
                await journal.record(prop(1))
    assert group.group_contains(KeyError, match="bug in evolve")
    with pytest.raises(ServiceUnavailableError):
        await journal.record(prop(2))


async def collect(follower: Journal, since: int | None, n: int, out: list[Record]) -> None:
    async for record in follower.subscribe(since):
        out.append(record)
        if len(out) == n:
            return


async def test_follower_sees_history_from_disk_then_live_records(
    log_path: Path, applied: Applied
) -> None:
    history = fill(log_path, RECENT + 1500, per_batch=500)  # more than the in-memory window
    log = EventLog.open(log_path)
    journal = Journal(log, applied)
    seen: list[Record] = []
    late: list[Record] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        await journal.record(*(prop(i) for i in range(10)))  # in memory only for recent seqs
        nursery.start_soon(collect, journal, 100, len(history) - 100 + 10 + 5, seen)
        nursery.start_soon(collect, journal, None, 5, late)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(5):
            await journal.record(prop(i))
        await journal.aclose()
    log.close()
    assert [r.seq for r in seen] == list(range(101, len(history) + 16))
    assert seen[: len(history) - 100] == history[100:]
    assert [r.seq for r in late] == list(range(len(history) + 11, len(history) + 16))


async def test_follower_ends_when_the_journal_stops(journal: Journal) -> None:
    await journal.record(prop(1))
    seen: list[Record] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, journal, 0, 99, seen)
        await trio.testing.wait_all_tasks_blocked()
        await journal.aclose()
    assert [r.seq for r in seen] == [1]


async def test_replaying_the_file_rebuilds_what_was_applied(log_path: Path) -> None:
    state: dict[str, dict[str, str]] = {}

    def evolve_into(target: dict[str, dict[str, str]]) -> Callable[[Record], None]:
        def apply(record: Record) -> None:
            event = record.event
            assert isinstance(event, PropertySet)
            target.setdefault(event.handle, {})[event.key] = event.value

        return apply

    log = EventLog.open(log_path)
    journal = Journal(log, evolve_into(state))
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for i in range(50):
            nursery.start_soon(journal.record, prop(i))
            for _ in range(i % 3):
                await trio.lowlevel.checkpoint()
        await trio.testing.wait_all_tasks_blocked()  # every caller has queued
        await journal.aclose()
    log.close()
    replayed: dict[str, dict[str, str]] = {}
    log = EventLog.open(log_path)
    for record in log.records():
        evolve_into(replayed)(record)
    log.close()
    assert replayed == state and sum(map(len, state.values())) == 50


async def test_write_in_trio_thread_keeps_autojump_deadlines_honest(
    opened: EventLog, applied: Applied, autojump_clock: trio.testing.MockClock
) -> None:
    journal = Journal(opened, applied, write_in_thread=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        with trio.fail_after(1):  # a thread would let the mock clock jump past this
            for i in range(20):
                await journal.record(prop(i))
        await journal.aclose()
    assert applied.seqs == list(range(1, 21)) and trio.current_time() < 1


async def test_lazy_submit_waits_to_share_the_next_waited_for_batch(
    journal: Journal,
    applied: Applied,
    monkeypatch: pytest.MonkeyPatch,
    mock_clock: trio.testing.MockClock,
) -> None:
    """A lazy submit (ProcessStarted: nobody waits for it) is held for a record somebody
    waits for (ProcessExited) and goes out in its batch: one fsync for both, in order. (The
    mock clock stands still: however slow the machine, LAZY_WAIT does not pass.)"""
    fsyncs = count_fsyncs(monkeypatch)
    lazy = journal.submit(prop(1), lazy=True)
    await trio.testing.wait_all_tasks_blocked()  # the writer holds it (it is not written)
    assert fsyncs == [] and applied.seqs == []
    records = await journal.record(prop(2))
    assert [r.seq for r in await lazy.wait()] == [1] and [r.seq for r in records] == [2]
    assert len(fsyncs) == 1 and journal.stats().largest_batch == 2


@pytest.fixture
async def inline_journal(opened: EventLog, applied: Applied) -> AsyncIterator[Journal]:
    """A running journal that writes in the trio thread, so that under the autojump clock
    (which the test asks for) its time is the journal's own."""
    journal = Journal(opened, applied, write_in_thread=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        yield journal
        await journal.aclose()


async def test_lazy_submit_alone_is_written_after_lazy_wait(
    inline_journal: Journal, applied: Applied, autojump_clock: trio.testing.MockClock
) -> None:
    started = trio.current_time()
    records = await inline_journal.submit(prop(1), lazy=True).wait()
    assert [r.seq for r in records] == [1] == applied.seqs
    assert trio.current_time() - started == pytest.approx(LAZY_WAIT)


async def test_aclose_writes_a_lazy_submit_at_once(
    inline_journal: Journal, autojump_clock: trio.testing.MockClock
) -> None:
    started = trio.current_time()
    pending = inline_journal.submit(prop(1), lazy=True)
    await inline_journal.aclose()
    assert [r.seq for r in await pending.wait()] == [1]
    assert trio.current_time() - started < LAZY_WAIT
