"""A passthrough process's output: the raw files `stdout` and `stderr` that the process writes
itself (conmon `-l passthrough`), and the order index the server keeps of the switches between
them (docs/adr/process-output.md, option 3).

The index, `<process_dir>/order`, is a text file of segments, one a line, appended by the
server: `<fd> <start> <end>\\n` says that bytes [start, end) of stream fd (1 stdout, 2 stderr)
came next. Segments of one stream are contiguous, so each stream's bytes are always complete
and in order; the index only orders the streams against each other.

- `OrderIndex`: the index of one process, kept in memory while the server runs and appended to
  the file at each switch. `LogWatcher` (garden.linux.output) calls `on_write(source)` for every
  `IN_MODIFY` of the two files in inotify's order (which is write order across files): a write
  to the other stream than the last closes the open segment at the size its stream has now.
  So the interleaving is as good as conmon's (which sees one switch per read). Output written
  while the server is down has no switches: on load it is put in as "the stream that was
  being written, then the other", nothing lost. `finish()` closes the index once the exit
  file exists (the process is gone, its bytes are all in the files).
- The cap: `tail(max_bytes)` is where a replay of at most `max_bytes` starts (counted over both
  streams from the end, in segment order). While the index is loaded, `on_write` frees the
  front of a file that is more than `max_bytes` plus `_PUNCH_SLACK` long with
  `fallocate(PUNCH_HOLE)` (the size stays, the blocks go), never past what a reader still
  has to read (a slow reader holds disk, it never loses bytes), and the front of the index
  likewise once most of it describes freed bytes. While no server runs nothing is freed;
  loading the index (a restart) and `finish()` free what grew meanwhile.
- `follow(...)` (on `LogWatcher`): segments from a start point, live, until `finish()`.

Everything here is synchronous and short (fstat, pread of at most `_READ_SIZE`, one small
write): it runs in the trio thread, which also orders the index's sizes after every read a
follower made (files only grow), so a follower never reads past the end of a segment.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from garden.bounds import PROCESS_OUTPUT_CAP
from garden.errors import KernelError

Source = Literal["stdout", "stderr"]
SOURCES: tuple[Source, Source] = ("stdout", "stderr")
ORDER = "order"
_FD: dict[Source, int] = {"stdout": 1, "stderr": 2}
_BY_FD: dict[bytes, Source] = {b"1": "stdout", b"2": "stderr"}
_OTHER: dict[Source, Source] = {"stdout": "stderr", "stderr": "stdout"}

log = logging.getLogger("garden.linux")

DEFAULT_CAP = PROCESS_OUTPUT_CAP  # API.md: the per-process cap of kept output
_PUNCH_SLACK = 8 << 20  # free the front in steps of at least this much
_PUNCH_ALIGN = 1 << 16
_ORDER_SLACK = 1 << 20  # dead index bytes before its front is freed too
# A new process's output is kept whole until its first reader (the run stream) has come or
# this many seconds have passed, so the run stream never misses its start.
_PIN_SECONDS = 30.0

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int


def punch_hole(fd: int, length: int) -> None:
    """Free the blocks of [0, length) of `fd` (the file keeps its size; reads give zeros)."""
    if length <= 0:
        return
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, mode, 0, length) < 0:
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS):
            return  # a filesystem without holes keeps the bytes: disk, not loss
        raise KernelError("fallocate PUNCH_HOLE", OSError(err, os.strerror(err)))


@dataclass(frozen=True, slots=True)
class Segment:
    source: Source
    start: int
    end: int


@dataclass(eq=False)
class Reader:
    """Where one follower is: segment number `seq` (absolute; `len` of the index's segments is
    the open one), offset `pos` in it, and per stream the offset before which it reads no more."""

    seq: int
    pos: int
    low: dict[Source, int] = field(default_factory=dict)


class OrderIndex:
    """The order index of one process dir (see the module doc). Close it with `close()`."""

    def __init__(self, process_dir: str | Path, *, cap: int = DEFAULT_CAP, pin: bool = False):
        self.dir = Path(process_dir)
        self.cap = cap
        self.segments: deque[Segment] = deque()
        self.first = 0  # absolute number of segments[0] (freed segments are dropped)
        self.ends: dict[Source, int] = {"stdout": 0, "stderr": 0}
        self.current: Source | None = None  # the stream of the open segment
        self.finished = False
        self.readers: set[Reader] = set()
        self.pinned_until = time.monotonic() + _PIN_SECONDS if pin else 0.0
        self.freed: dict[Source, int] = {"stdout": 0, "stderr": 0}
        self.write_failed = False  # an append to the index file failed (it misses segments)
        self._line_ends: deque[int] = deque()  # index file offset after each kept segment
        self._order_freed = 0
        self._fds: dict[Source, int] = {}
        self._order_fd = -1
        try:
            for source in SOURCES:
                self._fds[source] = _open_rw(self.dir / source)
            self._order_fd = os.open(
                self.dir / ORDER, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
            self._load()
        except BaseException:
            self.close()
            raise

    # -- sizes, loading, recording --------------------------------------------------------

    def size(self, source: Source) -> int:
        fd = self._fds.get(source, -1)
        return os.fstat(fd).st_size if fd >= 0 else 0

    def pread(self, source: Source, length: int, offset: int) -> bytes:
        fd = self._fds.get(source, -1)
        return os.pread(fd, length, offset) if fd >= 0 else b""

    def _load(self) -> None:
        data, base = _read_from_data(self._order_fd)
        self._order_freed = base
        offset = base
        seen: set[Source] = set()
        for line in data.split(b"\n")[:-1]:  # a torn last line (no newline) is not a segment
            offset += len(line) + 1
            parts = line.lstrip(b"\0").split(b" ")
            if len(parts) != 3 or parts[0] not in _BY_FD or not all(map(bytes.isdigit, parts[1:])):
                continue
            source = _BY_FD[parts[0]]
            start, end = int(parts[1]), int(parts[2])
            if source in seen:
                start = self.ends[source]  # each stream stays contiguous whatever the file says
            seen.add(source)
            if end <= start:
                continue
            self.segments.append(Segment(source, start, end))
            self._line_ends.append(offset)
            self.ends[source] = end
        for source in SOURCES:
            self.freed[source] = _data_start(self._fds.get(source, -1))
        # Output written while no server indexed it: the stream that was open first.
        last = self.segments[-1].source if self.segments else "stderr"
        self._close_gap(_OTHER[last])
        for source in SOURCES:  # what grew past the cap while no server ran
            self._free(source)

    def _close_gap(self, first: Source) -> None:
        for source in (first, _OTHER[first]):
            end = self.size(source)
            if end > self.ends[source]:
                self._append(source, end)

    def _append(self, source: Source, end: int) -> None:
        segment = Segment(source, self.ends[source], end)
        self.ends[source] = end
        line = f"{_FD[source]} {segment.start} {segment.end}\n".encode()
        try:
            os.write(self._order_fd, line)
            self._line_ends.append(os.lseek(self._order_fd, 0, os.SEEK_CUR))  # O_APPEND: end
        except OSError as e:
            # The disk is full (or worse): the segment is kept in memory; after a restart the
            # file's gap is read as "one stream, then the other". Order, never bytes, is lost.
            self._line_ends.append(self._line_ends[-1] if self._line_ends else 0)
            if not self.write_failed:
                log.warning("order-index-write-failed dir=%s error=%s", self.dir, e)
            self.write_failed = True
        self.segments.append(segment)

    def on_write(self, source: Source) -> None:
        """`source`'s file was written (an inotify IN_MODIFY, in write order)."""
        if self.finished:
            return
        if self.current is not None and source != self.current:
            self._append(self.current, self.size(self.current))
        self.current = source
        self._free(source)

    def finish(self) -> None:
        """The process has exited: close the open segment and put in what is left."""
        if self.finished:
            return
        self._close_gap(self.current or "stdout")
        self.current = None
        self.finished = True
        for source in SOURCES:
            self._free(source)

    # -- readers, the cap --------------------------------------------------------------------

    @property
    def end_seq(self) -> int:
        """The absolute number of the open segment (one past the last closed one)."""
        return self.first + len(self.segments)

    def segment(self, seq: int) -> Segment | None:
        """Segment `seq`, the open one (end -1) while not finished, or None past the end."""
        if seq < self.end_seq:
            return self.segments[seq - self.first]
        if self.finished or self.current is None:
            return None
        return Segment(self.current, self.ends[self.current], -1)

    def reader(self, replay_bytes: int | None) -> Reader:
        """A reader from the start (`None`) or at most `replay_bytes` before the end."""
        if replay_bytes is None:
            reader = Reader(self.first, self.segments[0].start if self.segments else 0)
            reader.low = {s: self.freed[s] for s in SOURCES}
            if self.segments:
                reader.low[self.segments[0].source] = self.segments[0].start
            self.pinned_until = 0.0
        else:
            reader = self._tail(replay_bytes)
        self.readers.add(reader)
        return reader

    def _tail(self, max_bytes: int) -> Reader:
        left = max_bytes
        low = {s: self.size(s) for s in SOURCES}
        if self.current is not None:  # the open segment first
            source = self.current
            start = max(self.ends[source], low[source] - left)
            left -= low[source] - start
            low[source] = start
        seq, pos = self.end_seq, low[self.current] if self.current else 0
        for i in range(len(self.segments) - 1, -1, -1):
            segment = self.segments[i]
            if left <= 0:
                break
            start = max(segment.start, segment.end - left)
            left -= segment.end - start
            low[segment.source] = start
            seq, pos = self.first + i, start
        for source in SOURCES:  # a stream not reached by the tail starts where it is now
            low[source] = max(low[source], self.freed[source])
        at = self.segment(seq)
        if at is not None:
            pos = max(pos, self.freed[at.source])
        return Reader(seq, pos, low)

    def release(self, reader: Reader) -> None:
        self.readers.discard(reader)

    def _free(self, source: Source) -> None:
        """Free the front of `source`'s file beyond the cap (see the module doc)."""
        size = self.size(source)
        if size - self.freed[source] <= self.cap + _PUNCH_SLACK:
            return
        if not self.readers and self.pinned_until > time.monotonic():
            return
        limit = min([size - self.cap, *(r.low.get(source, 0) for r in self.readers)])
        limit -= limit % _PUNCH_ALIGN
        if limit - self.freed[source] < _PUNCH_SLACK:
            return
        try:
            punch_hole(self._fds[source], limit)
        except KernelError as e:  # the bytes stay: disk, not loss
            log.warning("output-free-failed dir=%s error=%s", self.dir, e)
            return
        self.freed[source] = limit
        self._drop_freed()

    def _drop_freed(self) -> None:
        """Forget segments whose bytes are freed (no reader is before them), and free the index
        file's front once enough of it describes nothing."""
        oldest = min((r.seq for r in self.readers), default=self.end_seq)
        while (
            self.segments
            and self.first < oldest
            and self.segments[0].end <= self.freed[self.segments[0].source]
        ):
            self.segments.popleft()
            self.first += 1
            dead = self._line_ends.popleft()
            if dead - self._order_freed >= _ORDER_SLACK:
                with contextlib.suppress(KernelError):  # a longer index file: disk, not loss
                    punch_hole(self._order_fd, dead - dead % 4096)
                self._order_freed = dead - dead % 4096

    def close(self) -> None:
        for fd in (*self._fds.values(), self._order_fd):
            if fd >= 0:
                os.close(fd)
        self._fds.clear()
        self._order_fd = -1


def _open_rw(path: Path) -> int:
    """The file opened for reading and freeing its front (-1 if it is not there)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1


def _data_start(fd: int) -> int:
    """The offset of the first data of `fd` after a freed (punched) front."""
    if fd < 0:
        return 0
    try:
        return os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:  # all hole, or empty
            return os.fstat(fd).st_size
        raise


def _read_from_data(fd: int) -> tuple[bytes, int]:
    """The bytes of `fd` from its first data on, and that offset."""
    start = _data_start(fd)
    chunks = []
    offset = start
    while data := os.pread(fd, 1 << 20, offset):
        chunks.append(data)
        offset += len(data)
    return b"".join(chunks), start


__all__ = ["DEFAULT_CAP", "ORDER", "OrderIndex", "Reader", "Segment", "punch_hole"]
