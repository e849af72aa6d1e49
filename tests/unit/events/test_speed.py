"""Measured, not asserted: group-commit write rate and replay rate of 1,000,000 events.

Run with `pytest -m slow -s tests/unit/events/test_speed.py` to see the numbers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from garden.events.journal import Journal
from garden.events.log import EventLog
from garden.events.schema import Origin, PropertySet

from .conftest import prop

pytestmark = pytest.mark.slow


def test_replay_of_a_million_small_events(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    total, per_fsync = 1_000_000, 1000
    events = [(prop(i), Origin()) for i in range(per_fsync)]
    log = EventLog.open(path)
    started = time.perf_counter()
    for _ in range(total // per_fsync):
        log.append(events, now=1.0)
    wrote = time.perf_counter() - started
    log.close()

    started = time.perf_counter()
    log = EventLog.open(path)
    scanned = time.perf_counter() - started
    started = time.perf_counter()
    count = sum(1 for _ in log.records())
    replayed = time.perf_counter() - started
    state: dict[str, dict[str, str]] = {}
    started = time.perf_counter()
    for record in log.records():
        event = record.event
        assert isinstance(event, PropertySet)
        state.setdefault(event.handle, {})[event.key] = event.value
    applied = time.perf_counter() - started
    started = time.perf_counter()
    tail = sum(1 for _ in log.records(since=total - 1000))
    seeked = time.perf_counter() - started
    log.close()

    assert count == total and tail == 1000
    size = path.stat().st_size
    print(
        f"\n1M events, {size / 2**20:.1f} MiB ({size / total:.0f} B/record):"
        f"\n  append, fsync per {per_fsync}: {total / wrote / 1e3:,.0f} k ev/s ({wrote:.2f} s)"
        f"\n  open (crc + seq scan):     {total / scanned / 1e3:,.0f} k ev/s ({scanned:.2f} s)"
        f"\n  records() (crc + decode):  {total / replayed / 1e3:,.0f} k ev/s ({replayed:.2f} s)"
        f"\n  records() + apply to dict: {total / applied / 1e3:,.0f} k ev/s ({applied:.2f} s)"
        f"\n  records(since=last-1000):  {seeked * 1e3:.1f} ms"
    )


@pytest.mark.parametrize("callers", [1, 10, 100, 1000])
async def test_group_commit_write_rate(tmp_path: Path, callers: int) -> None:
    log = EventLog.open(tmp_path / "events.log")
    journal = Journal(log, lambda record: None)
    per_caller = max(20_000 // callers, 20)

    async def caller(i: int) -> None:
        for j in range(per_caller):
            await journal.record(prop(i * per_caller + j), origin=Origin(request_id=f"r{j}"))

    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        started = time.perf_counter()
        async with trio.open_nursery() as callers_nursery:
            for i in range(callers):
                callers_nursery.start_soon(caller, i)
        took = time.perf_counter() - started
        await journal.aclose()
    log.close()
    stats = journal.stats()
    print(
        f"\n{callers:>5} concurrent callers, 1 event each call: {stats.records / took:,.0f} rec/s, "
        f"{stats.batches} fsyncs for {stats.records} records "
        f"(avg batch {stats.records / stats.batches:.1f}, max {stats.largest_batch})"
    )
