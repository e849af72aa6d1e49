"""The snapshot task and what it needs from the journal: the position of the last applied
record, waiting for a seq, a snapshot every N records, and never a snapshot of a bad state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from garden.events.journal import Journal
from garden.events.log import EventLog
from garden.events.snapshot import SNAPSHOT_FILE, read_snapshot
from garden.events.snapshotter import Snapshotter
from garden.events.state import ServerState, evolve, replay

from .conftest import fill, prop


class Server:
    """A journal applying to a state, as main wires them, over a log of 30 records."""

    def __init__(self, log: EventLog, state: ServerState) -> None:
        self.log = log
        self.state = state
        self.journal = Journal(log, lambda record: evolve(state, record))


@pytest.fixture
async def server(log_path: Path) -> AsyncIterator[Server]:
    fill(log_path, 30)
    log = EventLog.open(log_path)
    server = Server(log, replay(log.records()))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.journal.run)
        yield server
        await server.journal.aclose()
    log.close()


def snapshotter(server: Server, *, every: int, written: int) -> Snapshotter:
    return Snapshotter(
        server.log.path.with_name(SNAPSHOT_FILE),
        server.state,
        server.journal,
        every=every,
        written=written,
    )


def snapshot_seq(server: Server) -> int:
    snapshot = read_snapshot(server.log.path.with_name(SNAPSHOT_FILE))
    return 0 if snapshot is None else snapshot.position.seq


async def test_journal_position_follows_what_is_applied(server: Server) -> None:
    assert server.journal.position == server.log.position
    for i in range(3):
        await server.journal.record(prop(i), prop(i + 1))
        assert server.journal.position == server.log.position
        assert server.journal.position.seq == server.state.last_seq == 32 + 2 * i


async def test_wait_applied_until_the_seq_or_the_end(server: Server) -> None:
    assert await server.journal.wait_applied(30)
    got: list[bool] = []

    async def wait(seq: int) -> None:
        got.append(await server.journal.wait_applied(seq))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, 32)
        nursery.start_soon(wait, 99)
        await trio.testing.wait_all_tasks_blocked()
        await server.journal.record(prop(1))
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        await server.journal.record(prop(2))
        await trio.testing.wait_all_tasks_blocked()
        assert got == [True]
        await server.journal.aclose()
    assert got == [True, False]


async def test_write_snapshots_the_state_at_the_journal_position(server: Server) -> None:
    snaps = snapshotter(server, every=100, written=0)
    assert await snaps.write()
    assert snaps.written == 30 == snapshot_seq(server)
    assert not await snaps.write(), "nothing new since"
    await server.journal.record(prop(1))
    assert await snaps.write()
    snapshot = read_snapshot(server.log.path.with_name(SNAPSHOT_FILE))
    assert snapshot is not None and snapshot.containers == server.state.containers
    assert snapshot.position == server.log.position


async def test_a_snapshot_every_n_records(server: Server) -> None:
    snaps = snapshotter(server, every=10, written=30)
    async with trio.open_nursery() as nursery:
        await nursery.start(snaps.run)
        for i in range(9):
            await server.journal.record(prop(i))
        await trio.testing.wait_all_tasks_blocked()
        assert snapshot_seq(server) == 0, "not yet due"
        await server.journal.record(prop(9))
        await trio.testing.wait_all_tasks_blocked()  # run() is writing, in a worker thread
        assert not await snaps.write(), "waits for the write in progress: nothing new after it"
        assert snaps.written == 40 == snapshot_seq(server)
        await server.journal.aclose()  # run() returns once the journal stops


async def test_a_start_that_replayed_a_long_tail_snapshots_at_once(server: Server) -> None:
    snaps = snapshotter(server, every=10, written=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(snaps.run)
        await trio.testing.wait_all_tasks_blocked()
        assert not await snaps.write()
        assert snaps.written == 30 == snapshot_seq(server)
        nursery.cancel_scope.cancel()


async def test_failed_write_is_logged_and_retried_an_interval_later(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    snaps = Snapshotter(
        server.log.path.parent / "missing" / SNAPSHOT_FILE,
        server.state,
        server.journal,
        every=5,
        written=30,
    )
    with caplog.at_level(logging.WARNING):
        await server.journal.record(*(prop(i) for i in range(5)))
        assert not await snaps.write()
    assert "snapshot-failed" in caplog.text and snaps.written == 30
    waits: list[int] = []
    real_wait = server.journal.wait_applied

    async def counting(seq: int) -> bool:
        waits.append(seq)
        return await real_wait(seq)

    server.journal.wait_applied = counting  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(snaps.run)
        await trio.testing.wait_all_tasks_blocked()
        assert waits == [40], "no busy retry: the next attempt is an interval later"
        nursery.cancel_scope.cancel()


async def test_a_state_off_the_log_is_never_saved(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    snaps = snapshotter(server, every=100, written=0)
    server.state.last_seq += 1  # as after an apply that failed halfway through a batch
    with caplog.at_level(logging.ERROR):
        assert not await snaps.write()
    assert "snapshot-skipped" in caplog.text and snapshot_seq(server) == 0


def test_interval_must_be_positive(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "events.log")
    with pytest.raises(ValueError, match="at least 1"):
        Snapshotter(tmp_path / "s", ServerState(), Journal(log, print), every=0, written=0)
    log.close()
