"""A receive buffer's two pure steps, shared by the blocking client (`garden.client.http11`)
and the benchmarks' trio client (`bench/http.py`), which read into a `bytearray` of their own:
making room for the next read, and cutting what was read into NDJSON lines without copying
the lines that lie inside one read."""

from __future__ import annotations

from collections.abc import Iterator


def make_room(
    buf: bytearray, mv: memoryview, start: int, end: int, want: int
) -> tuple[bytearray, memoryview, int, int]:
    """(buf, mv, start, end) with at least `want` free bytes after the unread `buf[start:end]`:
    the same buffer, or the unread bytes moved to its front if that makes the room, or a buffer
    of twice the size (or more) with them at its front."""
    if len(buf) - end >= want:
        return buf, mv, start, end
    unread = end - start
    if unread + want > len(buf):
        size = len(buf)
        while unread + want > size:
            size *= 2
        bigger = bytearray(size)
        bigger[:unread] = mv[start:end]
        return bigger, memoryview(bigger), 0, unread
    if unread:
        mv[:unread] = mv[start:end]  # overlapping: memmove
    return buf, mv, 0, unread


def complete_lines(
    buf: bytearray, mv: memoryview, pos: int, stop: int, pending: bytearray
) -> Iterator[memoryview | bytes]:
    """The lines (without their newline) that end in `buf[pos:stop]`: a view of the buffer for
    a line wholly inside it (valid until the buffer is read into again), a copy for one that
    began in `pending`; what follows the last newline is appended to `pending`."""
    while (nl := buf.find(b"\n", pos, stop)) >= 0:
        if pending:
            pending += mv[pos:nl]
            yield bytes(pending)
            pending.clear()
        else:
            yield mv[pos:nl]
        pos = nl + 1
    pending += mv[pos:stop]
