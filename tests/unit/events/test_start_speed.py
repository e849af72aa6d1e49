"""Measured, not asserted: how long a start takes with 1,000,000 events of 1,000 containers in
the log, from nothing but the log, from a snapshot at its end, and from a snapshot one interval
(`ServerConfig.snapshot_every`) before its end, as after a crash at the worst moment.

Run with `pytest -m slow -s tests/unit/events/test_start_speed.py` to see the numbers. Wall
times on a busy machine say little: compare the CPU seconds too.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import trio

from garden.config import ServerConfig
from garden.events.log import EventLog, LogPosition
from garden.events.snapshot import SNAPSHOT_FILE, capture, restore, write_snapshot
from garden.events.state import ServerState, evolve
from garden.main import serve
from tests.unit.fakes import FakeKernel, FakeNetworker, FakeProcesses

from .history import history

pytestmark = pytest.mark.slow

CONTAINERS, PER_CONTAINER = 1000, 1000
T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, str]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, f"{time.perf_counter() - wall:6.2f} s ({time.process_time() - cpu:.2f} s CPU)"


async def start_to_ping(state_dir: Path, running: ServerState) -> str:
    """Time from calling `serve` to a /ping, with a fake kernel on which every container of
    `running` still runs: recovery probes each, records it restored and adopts it."""
    config = ServerConfig(state_dir=str(state_dir), bind_port=0, tag="gspeed", handle_signals=False)
    kernel = FakeKernel()
    for c in running.containers.values():
        if (started := c.started()) is not None:
            kernel.live[c.container_id] = started
    server = partial(
        serve, config, kernel=kernel, processes=FakeProcesses(), networker=FakeNetworker()
    )
    async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
        wall, cpu = time.perf_counter(), time.process_time()
        binds = await nursery.start(server)
        assert (await client.get(f"{binds[0]}/ping")).status_code == 200
        took = f"{time.perf_counter() - wall:6.2f} s ({time.process_time() - cpu:.2f} s CPU)"
        nursery.cancel_scope.cancel()
    return took


async def test_start_of_a_million_events_with_and_without_a_snapshot(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    every = ServerConfig().snapshot_every
    total = CONTAINERS * PER_CONTAINER
    before_end = tmp_path / "snapshot-before-end.json"

    def write() -> tuple[ServerState, LogPosition]:  # as the journal: append, apply, snapshot
        log, state = EventLog.open(log_path), ServerState()
        for i, batch in enumerate(history(CONTAINERS, PER_CONTAINER, batch=every // 2)):
            for record in log.append(batch, now=1_764_434_400.0 + i):
                evolve(state, record)
            if log.last_seq == total - every:
                write_snapshot(before_end, capture(state, log.position))
        log.close()
        return state, log.position

    (live, end), wrote = timed(write)
    size = log_path.stat().st_size
    processes = sum(len(c.processes) for c in live.containers.values())
    print(
        f"\n{total:,} events of {CONTAINERS} containers ({processes:,} processes in the state),"
        f" {size / 2**20:.0f} MiB log;"
        f"\n  written and applied, fsync per {every // 2:,}: {wrote}"
    )
    size, took = timed(lambda: write_snapshot(snapshot_path, capture(live, end)))
    print(f"  writing a snapshot ({size / 2**20:.1f} MiB):           {took}")

    def start(label: str) -> ServerState:
        restored, took = timed(lambda: restore(log_path, snapshot_path))
        restored.log.close()
        print(f"  start to state, {label}{took}")
        return restored.state

    from_end = start("snapshot at the end:       ")
    shutil.copy(before_end, snapshot_path)
    from_before = start(f"snapshot {every:,} before: ")
    snapshot_path.unlink()
    from_log = start("no snapshot (full replay): ")
    for state in (from_end, from_before, from_log):
        assert state.last_seq == live.last_seq and state.containers == live.containers

    # The next start finds the snapshot the full replay's server would have written.
    write_snapshot(snapshot_path, capture(from_log, end))
    print(f"  start to /ping, snapshot at the end:       {await start_to_ping(state_dir, live)}")
