"""The receive buffer's pure steps shared by the blocking client and the bench client."""

from __future__ import annotations

from garden.client.recvbuf import complete_lines, make_room


def _buffer(data: bytes, size: int) -> tuple[bytearray, memoryview]:
    buf = bytearray(size)
    buf[: len(data)] = data
    return buf, memoryview(buf)


def test_room_already_there_keeps_everything() -> None:
    buf, mv = _buffer(b"abcd", 16)
    assert make_room(buf, mv, 1, 4, 8) == (buf, mv, 1, 4)


def test_room_made_by_moving_the_unread_bytes_to_the_front() -> None:
    buf, mv = _buffer(b"xxxxxxabcd", 12)
    got, _, start, end = make_room(buf, mv, 6, 10, 6)
    assert got is buf and (start, end) == (0, 4) and bytes(got[:4]) == b"abcd"


def test_room_made_by_a_larger_buffer() -> None:
    buf, mv = _buffer(b"xxabcdefgh", 10)
    got, got_mv, start, end = make_room(buf, mv, 2, 10, 20)
    assert got is not buf and len(got) >= 28 and len(got) == 40  # doubled until it fits
    assert (start, end) == (0, 8) and bytes(got_mv[:8]) == b"abcdefgh"


def test_lines_inside_a_read_are_views_and_a_split_one_is_joined() -> None:
    buf, mv = _buffer(b'{"a":1}\n{"b":2}\n{"c"', 32)
    pending = bytearray()
    lines = list(complete_lines(buf, mv, 0, 20, pending))
    assert [bytes(line) for line in lines] == [b'{"a":1}', b'{"b":2}']
    assert all(isinstance(line, memoryview) for line in lines)
    assert pending == b'{"c"'
    buf[:5] = b":3}\nz"
    joined = list(complete_lines(buf, mv, 0, 5, pending))
    assert joined == [b'{"c":3}'] and isinstance(joined[0], bytes)
    assert pending == b"z"
