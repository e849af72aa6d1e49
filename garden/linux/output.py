"""A process's output as conmon's k8s-file log holds it: parsing, replay and live following.

Log format (one line per write conmon made, at most 8 KiB of data each):
`<RFC 3339 time> <stdout|stderr> <F|P> <raw bytes>\\n` — `F` means the data ended with a newline
(which is not stored), `P` that it did not. The data bytes are the process's exact bytes (NUL,
`\\r` and invalid UTF-8 included: conmon never escapes), so output is rebuilt exactly.

- `parse(buf, base_offset)` (pure): the complete lines of `buf` as `Chunk`s, consecutive lines of
  one stream merged; `Chunk.offset` is the log offset just after the chunk's last line, a valid
  `start_offset` for a later `follow` (resume without loss or repeat).
- `read_chunks(log_path, start_offset)`: what the log holds now (sync; for replay and tests).
- `tail_offset(log_path, max_bytes)`: where to start so at most `max_bytes` of output are
  replayed (the API's per-process cap). It cuts at line boundaries, so it may keep up to one
  log line (8 KiB) less than `max_bytes`; never more. It reads about `max_bytes` plus the log's
  ~45 bytes per line of framing: call it through `trio.to_thread.run_sync`. Attach is then
  `watcher.follow(log, exit, start_offset=tail_offset(log, cap))`: replay, then live.
- `LogWatcher`: ONE inotify instance shared by every follower (the kernel allows only 128
  instances per user by default, and every running process may have a follower). Make it with
  `async with open_log_watcher() as watcher:` for the server's lifetime, then
  `watcher.follow(log_path, exit_path, start_offset=...)` yields `Chunk`s live and ends once the
  exit file exists and the log is read to its end (conmon finishes the log before it writes the
  exit file). No polling: the follower sleeps until inotify reports a write to the log or the
  exit file's arrival. Use it under `contextlib.aclosing` so its watches go at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
import trio

from garden.errors import KernelError
from garden.linux.passthrough import OrderIndex

Source = Literal["stdout", "stderr"]
_SOURCES: dict[bytes, Source] = {b"stdout": "stdout", b"stderr": "stderr"}
_READ_SIZE = 1 << 20
_LONG_LINE = 1024  # a first line at least this long picks the newline-by-newline parser
_F = ord("F")


class Chunk(msgspec.Struct, frozen=True):
    """Exact bytes a process wrote to one stream; `offset` is the log offset after them."""

    source: Source
    data: bytes
    offset: int


def parse(buf: bytes, base_offset: int = 0) -> tuple[list[Chunk], int]:
    """Chunks for the complete lines in `buf` (which starts at log offset `base_offset`) and the
    number of bytes used; a trailing partial line is left for the next call. Malformed lines
    (no stream/tag) are skipped."""
    end = buf.rfind(b"\n") + 1
    if end == 0:
        return [], 0
    if buf.find(b"\n", 0, _LONG_LINE) < 0:
        # Long lines (conmon writes up to 8 KiB a line when output comes fast): finding each
        # newline with memchr beats bytes.split, which scans byte by byte (3.6x per MiB here).
        return _parse_slow(buf, base_offset)
    lines = buf[: end - 1].split(b"\n")
    # Fast path: every header has the width of the first one (conmon's timestamps are fixed
    # width), checked by slicing each line's " <stream> <tag> " at that place.
    h = _header_len(lines[0])
    heads = [line[h - 10 : h] for line in lines] if h >= 10 else []
    counts = [heads.count(head) for head in _HEADS]
    if not heads or sum(counts) != len(heads):
        return _parse_slow(buf, base_offset)
    if counts[2] + counts[3] == 0 or counts[0] + counts[1] == 0:  # one stream only
        source: Source = "stdout" if counts[0] + counts[1] else "stderr"
        full = counts[0] + counts[2]
        return [Chunk(source, _join(lines, heads, h, full), base_offset + end)], end
    chunks = []
    offset = base_offset
    for source, start, stop in _runs(heads):
        group, group_heads = lines[start:stop], heads[start:stop]
        offset += sum(map(len, group)) + len(group)
        full = group_heads.count(_OUT_F) + group_heads.count(_ERR_F)
        chunks.append(Chunk(source, _join(group, group_heads, h, full), offset))
    return chunks, end


_OUT_F, _OUT_P, _ERR_F, _ERR_P = b" stdout F ", b" stdout P ", b" stderr F ", b" stderr P "
_HEADS = (_OUT_F, _OUT_P, _ERR_F, _ERR_P)


def _header_len(line: bytes) -> int:
    s1 = line.find(b" ")
    s2 = line.find(b" ", s1 + 1) if s1 >= 0 else -1
    return s2 + 3 if s2 >= 0 else -1


def _runs(heads: list[bytes]) -> list[tuple[Source, int, int]]:
    """(source, start, stop) for each run of consecutive lines of one stream."""
    n = len(heads)
    runs: list[tuple[Source, int, int]] = []
    start = 0
    for i in range(1, n):
        if heads[i][1:7] != heads[start][1:7]:
            runs.append((_SOURCES[heads[start][1:7]], start, i))
            start = i
    runs.append((_SOURCES[heads[start][1:7]], start, n))
    return runs


def _join(lines: list[bytes], heads: list[bytes], h: int, full: int) -> bytes:
    """The data of `lines` (one stream, `full` of them F lines): F lines get their newline
    back, P lines do not."""
    if full == len(lines):
        return b"\n".join([line[h:] for line in lines]) + b"\n"
    if full == 0:
        return b"".join([line[h:] for line in lines])
    return b"".join(
        [ln[h:] + b"\n" if hd[8] == _F else ln[h:] for ln, hd in zip(lines, heads, strict=True)]
    )


def _parse_slow(buf: bytes, base_offset: int) -> tuple[list[Chunk], int]:
    """`parse` line by line, for logs whose headers vary in width or hold malformed lines."""
    mv = memoryview(buf)
    chunks: list[Chunk] = []
    parts: list[memoryview] = []
    current: Source | None = None
    pos = 0
    end_of_parts = 0
    while (nl := buf.find(b"\n", pos)) >= 0:
        s1 = buf.find(b" ", pos, nl)
        s2 = buf.find(b" ", s1 + 1, nl) if s1 >= 0 else -1
        source = _SOURCES.get(buf[s1 + 1 : s2]) if s2 >= 0 and s2 + 1 < nl else None
        if source is not None:
            start = min(s2 + 3, nl)
            data = mv[start : nl + 1] if buf[s2 + 1] == _F else mv[start:nl]
            if source != current and parts:
                chunks.append(_chunk(current, parts, base_offset + end_of_parts))
                parts = []
            current = source
            parts.append(data)
            end_of_parts = nl + 1
        pos = nl + 1
    if parts:
        chunks.append(_chunk(current, parts, base_offset + end_of_parts))
    return chunks, pos


def _chunk(source: Source | None, parts: list[memoryview], offset: int) -> Chunk:
    assert source is not None
    return Chunk(source, b"".join(parts), offset)


def read_chunks(log_path: str | Path, start_offset: int = 0) -> Iterator[Chunk]:
    """The chunks the log holds now from `start_offset` (a line start), without following."""
    with open(log_path, "rb") as f:
        f.seek(start_offset)
        pending = b""
        pos = start_offset
        while data := f.read(_READ_SIZE):
            buf = pending + data
            chunks, used = parse(buf, pos)
            yield from chunks
            pending = buf[used:]
            pos += used


def tail_offset(log_path: str | Path, max_bytes: int) -> int:
    """The line start from which the log replays at most `max_bytes` of output (and at least
    `max_bytes` minus one line); a partial last line is never counted."""
    with open(log_path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        total = 0
        carry = b""  # bytes of the line that straddles the previous block boundary
        found_end = False
        while end > 0:
            start = max(0, end - _READ_SIZE)
            f.seek(start)
            buf = f.read(end - start) + carry
            lines = buf.split(b"\n")
            carry = lines[0] if start > 0 else b""
            complete = lines if start == 0 else lines[1:]
            pos = start + len(buf)  # offset just after buf
            for line in reversed(complete):
                line_end = pos
                pos -= len(line) + 1
                if not found_end:  # the text after the last newline: partial, skip it
                    found_end = True
                    continue
                total += _data_len(line)
                if total > max_bytes:
                    return line_end + 1
            end = start
        return 0


def _data_len(line: bytes) -> int:
    s1 = line.find(b" ")
    s2 = line.find(b" ", s1 + 1)
    if s1 < 0 or s2 < 0 or s2 + 1 >= len(line):
        return 0
    return max(0, len(line) - (s2 + 3)) + (1 if line[s2 + 1] == _F else 0)


# --- inotify ---------------------------------------------------------------------------------

_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_WATCH_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise KernelError(what, OSError(err, os.strerror(err)))
    return result


@dataclass
class _Watch:
    refs: int = 0
    generation: int = 0
    waiters: set[trio.Event] = field(default_factory=set)


class LogWatcher:
    """One inotify instance and the task that reads it; wakes followers of changed dirs."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._watches: dict[int, _Watch] = {}
        self._indexes: dict[int, OrderIndex] = {}  # passthrough process dirs, by watch

    def add_index(self, index: OrderIndex) -> int:
        """Feed `index` the writes to its files from now on; returns the watch for
        `remove_index`."""
        wd = self._add(index.dir)
        self._indexes[wd] = index
        return wd

    def remove_index(self, wd: int) -> None:
        self._indexes.pop(wd, None)
        self._remove(wd)

    def _add(self, directory: Path) -> int:
        wd = _check(
            _libc.inotify_add_watch(self._fd, os.fsencode(directory), _WATCH_MASK),
            f"inotify_add_watch {directory}",
        )
        self._watches.setdefault(wd, _Watch()).refs += 1
        return wd

    def _remove(self, wd: int) -> None:
        w = self._watches[wd]
        w.refs -= 1
        if w.refs == 0:
            del self._watches[wd]
            _libc.inotify_rm_watch(self._fd, wd)  # EINVAL if the dir is gone: nothing to undo

    def _generations(self, wds: list[int]) -> list[int]:
        return [self._watches[wd].generation for wd in wds]

    async def _wait_change(self, wds: list[int], seen: list[int]) -> None:
        """Return once any of `wds` changed after `seen` was taken (at once if it already has)."""
        if self._generations(wds) != seen:
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        for wd in wds:
            self._watches[wd].waiters.add(event)
        try:
            await event.wait()
        finally:
            for wd in wds:
                self._watches[wd].waiters.discard(event)

    def _wake(self, wd: int) -> None:
        w = self._watches.get(wd)
        if w is not None:
            w.generation += 1
            for event in w.waiters:
                event.set()

    async def _run(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, name_len = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + name_len]
                pos += _EVENT.size + name_len
                index = self._indexes.get(wd)
                if index is not None and mask & _IN_MODIFY:
                    source = _SOURCES.get(name.rstrip(b"\0"))
                    if source is not None:
                        index.on_write(source)
                if wd == -1:  # IN_Q_OVERFLOW: events were lost, wake everyone
                    for key in list(self._watches):
                        self._wake(key)
                else:
                    self._wake(wd)

    async def follow(
        self, log_path: str | Path, exit_path: str | Path, *, start_offset: int = 0
    ) -> AsyncGenerator[Chunk, None]:
        """Chunks from `start_offset` (a line start) on, live, until the process has exited
        (`exit_path` exists) and the log is read to its end."""
        log_path, exit_path = Path(log_path), Path(exit_path)
        wds: list[int] = []
        fd = -1
        try:
            wds = [self._add(log_path.parent), self._add(exit_path.parent)]
            # `pos` is the start of the first line not yet parsed: a line still being written
            # is read again once it is complete, instead of being kept and copied in front of
            # every next read.
            pos, finished, size, data = start_offset, False, _READ_SIZE, b""
            while True:
                seen = self._generations(wds)
                if fd < 0:
                    fd = _open_if_exists(log_path)
                data = _pread_written(fd, size, pos)
                chunks, used = parse(data, pos) if data else ([], 0)
                if used:
                    pos += used
                    size = _READ_SIZE
                    for chunk in chunks:
                        yield chunk
                    await trio.lowlevel.checkpoint()
                elif len(data) == size:
                    size *= 2  # one line longer than a read: read more at once
                elif finished:
                    break
                elif exit_path.exists():
                    finished = True  # the log is complete now: read it to the end once more
                else:
                    await self._wait_change(wds, seen)
            if data:  # conmon always ends its lines; keep even a torn one
                chunks, _ = parse(data + b"\n", pos)
                for chunk in chunks:
                    yield chunk
        finally:
            if fd >= 0:
                os.close(fd)
            for wd in wds:
                self._remove(wd)

    async def follow_passthrough(
        self, index: OrderIndex, exit_path: str | Path, *, replay_bytes: int | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """The output of a passthrough process in its index's order, from the start (or its
        last `replay_bytes`), live, until the process has exited (`exit_path` exists) and
        everything is read (or its directory is gone: destroyed). `Chunk.offset` is the offset
        in its stream's file after it."""
        exit_path = Path(exit_path)
        wds: list[int] = []
        reader = index.reader(replay_bytes)
        try:
            wds = [self._add(index.dir), self._add(exit_path.parent)]
            while True:
                seen = self._generations(wds)
                segment = index.segment(reader.seq)
                if segment is None:
                    if index.finished:
                        break
                    if _gone(exit_path):
                        index.finish()
                    else:
                        await self._wait_change(wds, seen)
                    continue
                source = segment.source
                pos = max(reader.pos, segment.start, index.freed[source])
                want = _READ_SIZE if segment.end < 0 else min(_READ_SIZE, segment.end - pos)
                data = index.pread(source, want, pos) if want > 0 else b""
                if data:
                    reader.pos = reader.low[source] = pos + len(data)
                    yield Chunk(source, data, reader.pos)
                    await trio.lowlevel.checkpoint()
                elif segment.end >= 0:  # this segment is read: on to the next one
                    reader.seq += 1
                    reader.pos = 0
                    reader.low[source] = segment.end
                elif _gone(exit_path):
                    index.finish()  # the open segment is closed, the rest put in
                else:
                    await self._wait_change(wds, seen)
        finally:
            index.release(reader)
            for wd in wds:
                self._remove(wd)


def _gone(exit_path: Path) -> bool:
    """The process has exited (its exit file exists) or its directory was removed."""
    return exit_path.exists() or not exit_path.parent.exists()


def _pread_written(fd: int, size: int, pos: int) -> bytes:
    """At most `size` bytes of the log at `pos`: only what is written (fstat), so that each
    read is allocated at its size. (`pread(fd, 1 MiB)` allocates 1 MiB and shrinks it to the
    few lines there were, leaving a small live chunk at the start of a 1 MiB hole in glibc's
    heap per read of every follower: docs/performance.md#load-test.)"""
    if fd < 0:
        return b""
    written = os.fstat(fd).st_size - pos
    return os.pread(fd, min(size, written), pos) if written > 0 else b""


def _open_if_exists(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1


@contextlib.asynccontextmanager
async def open_log_watcher() -> AsyncIterator[LogWatcher]:
    """A `LogWatcher` whose reader task runs until the block ends."""
    fd = _check(_libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC), "inotify_init1")
    try:
        async with trio.open_nursery() as nursery:
            watcher = LogWatcher(fd)
            nursery.start_soon(watcher._run)
            yield watcher
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


__all__ = [
    "Chunk",
    "LogWatcher",
    "Source",
    "open_log_watcher",
    "parse",
    "read_chunks",
    "tail_offset",
]
