"""`OrderIndex` on plain files (no process): segments from switches, the gap after a reload,
the tail of the cap across both streams, and a freed front that readers never see."""

from __future__ import annotations

import os
from pathlib import Path

from garden.linux.passthrough import OrderIndex


def write(d: Path, source: str, data: bytes) -> None:
    with open(d / source, "ab") as f:
        f.write(data)


def make(tmp_path: Path) -> Path:
    for name in ("stdout", "stderr"):
        (tmp_path / name).touch()
    return tmp_path


def segments(index: OrderIndex) -> list[tuple[str, int, int]]:
    return [(s.source, s.start, s.end) for s in index.segments]


def test_switches_become_segments_and_the_file_keeps_them(tmp_path: Path) -> None:
    d = make(tmp_path)
    index = OrderIndex(d)
    for source, data in (("stdout", b"ab"), ("stdout", b"c"), ("stderr", b"E"), ("stdout", b"d")):
        write(d, source, data)
        index.on_write(source)  # type: ignore[arg-type]
    assert segments(index) == [("stdout", 0, 3), ("stderr", 0, 1)]
    index.finish()
    assert segments(index) == [("stdout", 0, 3), ("stderr", 0, 1), ("stdout", 3, 4)]
    assert (d / "order").read_text() == "1 0 3\n2 0 1\n1 3 4\n"
    index.close()
    again = OrderIndex(d)
    assert segments(again) == segments(index)
    again.close()


def test_output_written_without_an_index_goes_in_open_stream_first(tmp_path: Path) -> None:
    d = make(tmp_path)
    index = OrderIndex(d)
    write(d, "stdout", b"o1")
    index.on_write("stdout")
    write(d, "stderr", b"e1")
    index.on_write("stderr")  # the stream being written at the "crash": stderr
    index.close()
    write(d, "stdout", b"o2")
    write(d, "stderr", b"e2")
    with open(d / "order", "ab") as f:
        f.write(b"1 2 ")  # a torn last line is no segment
    index = OrderIndex(d)
    assert segments(index) == [("stdout", 0, 2), ("stderr", 0, 4), ("stdout", 2, 4)]
    index.close()


def test_the_tail_counts_both_streams_from_the_end(tmp_path: Path) -> None:
    d = make(tmp_path)
    index = OrderIndex(d)
    for source, data in (("stdout", b"aaaa"), ("stderr", b"bb"), ("stdout", b"cc")):
        write(d, source, data)
        index.on_write(source)  # type: ignore[arg-type]
    reader = index._tail(5)  # "cc" (open), "bb", and one byte of "aaaa"
    assert (reader.seq, reader.pos) == (0, 3)
    assert reader.low == {"stdout": 3, "stderr": 0}
    index.close()


def test_a_punched_index_front_still_loads(tmp_path: Path) -> None:
    d = make(tmp_path)
    with open(d / "order", "wb") as f:
        f.write(b"\0" * 8192 + b"1 100 200\n2 0 5\n")
    write(d, "stdout", b"x" * 200)
    write(d, "stderr", b"y" * 5)
    index = OrderIndex(d)
    assert segments(index) == [("stdout", 100, 200), ("stderr", 0, 5)]
    index.close()
    assert os.path.getsize(d / "order") == 8192 + 16


def test_a_failed_index_write_loses_order_only_never_bytes(tmp_path: Path) -> None:
    d = make(tmp_path)
    index = OrderIndex(d)
    os.close(index._order_fd)
    index._order_fd = os.open(d / "stdout", os.O_RDONLY)  # every write fails: EBADF
    write(d, "stdout", b"o")
    index.on_write("stdout")
    write(d, "stderr", b"e")
    index.on_write("stderr")  # must not raise: the watcher's task would die with it
    index.finish()
    assert index.write_failed
    assert segments(index) == [("stdout", 0, 1), ("stderr", 0, 1)]
    index.close()
    again = OrderIndex(d)  # after a restart: the gap rule, every byte still there
    assert sorted(segments(again)) == [("stderr", 0, 1), ("stdout", 0, 1)]
    again.close()
