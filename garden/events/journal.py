"""The journal: group commit of events to the log on trio, applying them, and followers.

`record()` is the only way state changes: callers queue their events; one writer task (`run`)
takes everything queued, writes it as one batch with one fsync in a worker thread, applies each
record in seq order in the trio thread, then wakes the callers with their records.

Semantics a caller can rely on:
- `record()` returning means the events are durable *and* applied to the state.
- An `InternalError` means the write failed; nothing was applied and the log was cut back. If
  the server crashes before that cut is durable, replay may still find the events, so an error
  means "outcome unknown", like a lost reply.
- Cancellation before `record()` queues its events (a pending cancel at entry) writes nothing.
  Once queued, cancelling the caller does not withdraw the events: they are facts and are still
  written and applied; the caller just does not hear back. The batch in progress is shielded,
  so the log and the applied state never disagree.
- `apply` must not raise (it is the pure evolve). If it does, the state no longer matches the
  log: every caller of that batch gets an `InternalError` and `run()` re-raises, stopping the
  server; a restart replays the log.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Final, final

import msgspec
import trio

from garden import faults
from garden.errors import InternalError, ServiceUnavailableError
from garden.events.log import EventLog, LogPosition, check_events
from garden.events.schema import AnyEvent, Origin, Record

log = logging.getLogger("garden.journal")

NO_ORIGIN: Final = Origin()
RECENT: Final = 4096  # records kept in memory for followers that are nearly caught up
CHUNK: Final = 1024  # records a follower fetches at a time
# How long a lazy submit may wait for a record somebody waits for, to share its fsync (a
# process's ProcessStarted and, for a short one, its ProcessExited: one fsync, not two).
LAZY_WAIT: Final = 0.01
RETRY_EVERY: Final = 1.0  # s between tries of `record_until_written`


@final
class JournalStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters for /metrics; `batches` == fsyncs made by the journal."""

    records: int
    batches: int
    bytes: int
    write_errors: int
    largest_batch: int
    last_seq: int
    size_bytes: int = 0  # of the log file


@final
class Pending:
    """One `record()` or `submit()` call's events, waiting for the writer."""

    __slots__ = ("done", "error", "events", "lazy_until", "origin", "records")

    def __init__(
        self, events: tuple[AnyEvent, ...], origin: Origin, lazy_until: float | None = None
    ) -> None:
        self.events = events
        self.origin = origin
        self.lazy_until = lazy_until  # trio time by which a lazy submit is written at the latest
        self.done = trio.Event()
        self.records: list[Record] = []
        self.error: InternalError | ServiceUnavailableError | None = None

    def fail(self, error: InternalError | ServiceUnavailableError) -> None:
        self.error = error
        self.done.set()

    async def wait(self) -> list[Record]:
        """Until the events are durable and applied: their records, or the write's error."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.records


@final
class Journal:
    """Group-committing writer in front of an `EventLog` whose records are already applied
    (construct it after replay). Start `run` with `nursery.start`; stop with `aclose`."""

    def __init__(
        self,
        log: EventLog,
        apply: Callable[[Record], None],
        *,
        clock: Callable[[], float] = time.time,
        write_in_thread: bool = True,
    ) -> None:
        """`write_in_thread=False` writes in the trio thread, blocking it: for tests under
        `autojump_clock`, which otherwise jumps past every deadline while fsync runs."""
        self._log = log
        self._write_in_thread = write_in_thread
        self._apply = apply
        self._clock = clock
        self._queue: list[Pending] = []
        self._has_work = trio.Event()
        self._closing = False
        self._started = False
        self._stopped = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._published = log.last_seq
        self._position = log.position
        self._recent: deque[Record] = deque(maxlen=RECENT)
        self._new_records = trio.Event()
        self._records = self._batches = self._bytes = self._errors = self._largest = 0

    @property
    def last_seq(self) -> int:
        """The seq of the last record that is durable and applied."""
        return self._published

    @property
    def position(self) -> LogPosition:
        """Where the last applied record ends in the log. Read in the trio thread it matches
        the state the records were applied to (a snapshot keeps the two together)."""
        return self._position

    async def wait_applied(self, seq: int) -> bool:
        """Wait until the record `seq` is durable and applied: True, or False if the journal
        stopped first."""
        while self._published < seq:
            if self._stopped.is_set():
                return False
            await self._new_records.wait()
        await trio.lowlevel.checkpoint()
        return True

    def stats(self) -> JournalStats:
        return JournalStats(
            records=self._records,
            batches=self._batches,
            bytes=self._bytes,
            write_errors=self._errors,
            largest_batch=self._largest,
            last_seq=self._published,
            size_bytes=self._log.size_bytes,
        )

    async def record(self, *events: AnyEvent, origin: Origin = NO_ORIGIN) -> list[Record]:
        """Make `events` durable and applied, in order, as consecutive records; return them.
        See the module docstring for errors and cancellation."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not events:
            if self._closing:
                raise ServiceUnavailableError("the event journal is shutting down")
            await trio.lowlevel.cancel_shielded_checkpoint()
            return []
        return await self.submit(*events, origin=origin).wait()

    async def record_until_written(
        self, *events: AnyEvent, origin: Origin = NO_ORIGIN, retry_every: float = RETRY_EVERY
    ) -> list[Record] | None:
        """For a fact that must reach the log but has nobody to answer an error to (a
        process's exit, a container's init dying): `record()`, and while the write fails (the
        log's disk is full...) again every `retry_every` s. The records once written; None if
        the journal stops first. Cancelling the caller between tries abandons them (the next
        start finds the fact again where the kernel keeps it: the exit file, the dead init)."""
        what = "+".join(type(event).__name__ for event in events)
        failures = 0
        while True:
            try:
                with trio.CancelScope(shield=True):  # a write under way is not abandoned
                    return await self.record(*events, origin=origin)
            except ServiceUnavailableError:
                return None
            except InternalError as exc:
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("record-retrying events=%s failures=%d error=%s",
                                what, failures, exc)  # fmt: skip
            try:
                await trio.sleep(retry_every)
            except trio.Cancelled:
                log.warning("record-abandoned events=%s failures=%d", what, failures)
                raise

    def submit(self, *events: AnyEvent, origin: Origin = NO_ORIGIN, lazy: bool = False) -> Pending:
        """Queue `events` as `record()` does, without waiting: they are written before
        whatever is queued after them (the same batch or an earlier one). `await
        pending.wait()` for the outcome; until then nothing may be told that depends on
        them being durable. `lazy`: nobody waits for them yet, so the writer holds them up
        to LAZY_WAIT s for a record somebody waits for, to share its fsync."""
        if self._closing:
            raise ServiceUnavailableError("the event journal is shutting down")
        try:
            check_events(events)
        except ValueError as exc:
            raise InternalError(str(exc)) from exc
        pending = Pending(events, origin, trio.current_time() + LAZY_WAIT if lazy else None)
        self._queue.append(pending)
        self._has_work.set()
        return pending

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer loop. Returns once `aclose` has drained the queue."""
        if self._started:
            raise RuntimeError("Journal.run() was already started")
        self._started = True
        try:
            with trio.CancelScope() as self._scope:
                task_status.started()
                while self._queue or not self._closing:
                    if not self._queue:
                        self._has_work = trio.Event()
                        await self._has_work.wait()
                        continue
                    if not self._closing and all(p.lazy_until for p in self._queue):
                        deadline = min(p.lazy_until or 0.0 for p in self._queue)
                        if trio.current_time() < deadline:
                            self._has_work = trio.Event()
                            with trio.move_on_at(deadline):
                                await self._has_work.wait()
                            continue
                    await trio.lowlevel.checkpoint_if_cancelled()  # aclose's deadline passed?
                    batch, self._queue = self._queue, []
                    with trio.CancelScope(shield=True):
                        await self._commit(batch)
        finally:
            self._stop()

    async def aclose(self, *, timeout: float = 10.0) -> None:
        """Refuse new records, let the writer drain the queue within `timeout`, then cancel
        it (the batch in progress still completes) and fail whatever is left."""
        self._closing = True
        self._has_work.set()
        if not self._started:
            self._stop()
        with trio.move_on_after(timeout):
            await self._stopped.wait()
            return
        if self._scope is not None:
            self._scope.cancel()
        with trio.CancelScope(shield=True):
            await self._stopped.wait()

    def _stop(self) -> None:
        self._closing = True
        queue, self._queue = self._queue, []
        for pending in queue:
            pending.fail(ServiceUnavailableError("the event journal stopped"))
        self._stopped.set()
        self._new_records.set()

    async def _commit(self, batch: list[Pending]) -> None:
        items = [(event, p.origin) for p in batch for event in p.events]
        size_before = self._log.size_bytes
        try:
            if self._write_in_thread:
                records = await trio.to_thread.run_sync(self._log.append, items, self._clock())
            else:
                records = self._log.append(items, self._clock())
        except (OSError, ValueError) as exc:
            self._errors += 1
            for pending in batch:
                error = InternalError(f"event log write failed: {exc}")
                error.__cause__ = exc  # an ENOSPC is answered 507 (garden.errors.exhaustion_of)
                pending.fail(error)
            return
        for record in records:
            faults.reached(f"record:{type(record.event).__name__}")
        applied = False
        try:
            for record in records:
                self._apply(record)
            applied = True
        finally:
            if not applied:
                for pending in batch:
                    pending.fail(InternalError("applying an event failed; the server must restart"))
        start = 0
        for pending in batch:
            pending.records = records[start : start + len(pending.events)]
            start += len(pending.events)
            pending.done.set()
        self._records += len(records)
        self._batches += 1
        self._bytes += self._log.size_bytes - size_before
        self._largest = max(self._largest, len(records))
        self._recent.extend(records)
        self._published = records[-1].seq
        self._position = self._log.position
        self._new_records.set()
        self._new_records = trio.Event()

    def subscribe(self, since: int | None = None) -> Follower:
        """Records with seq > `since` (default: from now on): history from disk, then live
        ones as they are applied. Ends when the journal stops."""
        return Follower(self, self._published if since is None else since)

    async def _records_after(self, seq: int) -> list[Record]:
        """Up to CHUNK applied records after `seq`, waiting for one; [] once stopped."""
        while self._published <= seq:
            if self._stopped.is_set():
                return []
            await self._new_records.wait()
        if self._recent and self._recent[0].seq <= seq + 1:
            start = seq + 1 - self._recent[0].seq
            await trio.lowlevel.checkpoint()
            return list(islice(self._recent, start, start + CHUNK))
        upto = self._published
        return await trio.to_thread.run_sync(self._read_disk, seq, upto)

    def _read_disk(self, seq: int, upto: int) -> list[Record]:
        out: list[Record] = []
        for record in self._log.records(since=seq):
            if record.seq > upto or len(out) == CHUNK:
                break
            out.append(record)
        return out


@final
class Follower:
    """Async iterator of records after a seq; memory is bounded by CHUNK, and a slow follower
    never holds the writer back: whatever left the in-memory window is re-read from disk."""

    def __init__(self, journal: Journal, since: int) -> None:
        self._journal = journal
        self.cursor = since
        self._buffer: deque[Record] = deque()

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> Record:
        if self._buffer:
            await trio.lowlevel.checkpoint()
        else:
            self._buffer.extend(await self._journal._records_after(self.cursor))
            if not self._buffer:
                raise StopAsyncIteration
        record = self._buffer.popleft()
        self.cursor = record.seq
        return record
