"""The task that keeps the snapshot recent: every `every` records, and once more at shutdown.

The state is captured in the trio thread, between two records, where it matches the journal's
position; encoding and writing happen in a worker thread. A snapshot that cannot be written
is logged and skipped: it only makes the next start shorter, the log has everything.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import final

import trio

from garden.events.journal import Journal
from garden.events.snapshot import capture, write_snapshot
from garden.events.state import ServerState

log = logging.getLogger("garden.events.snapshot")


@final
class Snapshotter:
    """Writes snapshots of `state` to `path`. `written` is the seq of the snapshot the server
    started from (0 if none): the next one is due `every` records after it."""

    def __init__(
        self, path: Path, state: ServerState, journal: Journal, *, every: int, written: int
    ) -> None:
        if every < 1:
            raise ValueError(f"snapshot interval must be at least 1 record, not {every}")
        self._path = path
        self._state = state
        self._journal = journal
        self._every = every
        self.written = written
        self._due = written + every
        self._lock = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write a snapshot whenever `every` records have been applied since the last one
        (at once if the start replayed that many). Returns when the journal stops."""
        task_status.started()
        while await self._journal.wait_applied(self._due):
            await self.write()

    async def write(self) -> bool:
        """Write a snapshot of the state now, unless nothing changed since the last one.
        True if one was written."""
        async with self._lock:
            position = self._journal.position
            self._due = position.seq + self._every
            if position.seq <= self.written:
                return False
            if self._state.last_seq != position.seq:  # a failed apply: never save that state
                log.error(
                    "snapshot-skipped state_seq=%d log_seq=%d", self._state.last_seq, position.seq
                )
                return False
            snapshot = capture(self._state, position)
            started = time.perf_counter()
            try:
                size = await trio.to_thread.run_sync(write_snapshot, self._path, snapshot)
            except OSError as exc:
                log.warning("snapshot-failed path=%s error=%s", self._path, exc)
                return False
            self.written = position.seq
            log.info(
                "snapshot-written seq=%d containers=%d bytes=%d seconds=%.3f",
                position.seq,
                len(snapshot.containers),
                size,
                time.perf_counter() - started,
            )
            return True
