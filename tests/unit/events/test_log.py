"""The log file: format round trip, torn tails, corruption, seq rules, upcasting, repair."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garden.errors import LogCorruptError
from garden.events import log as log_module
from garden.events.log import EventLog, decode_record, repair
from garden.events.schema import SCHEMA_VERSION, GraceTimeSet, Origin, Record

from .conftest import fill, line, prop
from .strategies import EVENTS, any_event, origins


@pytest.mark.parametrize("kind", list(EVENTS), ids=lambda k: k.__name__)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_every_event_type_round_trips_through_the_file(kind: type, data: st.DataObject) -> None:
    batch = data.draw(st.lists(st.tuples(EVENTS[kind], origins), min_size=1, max_size=4))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.log"
        log = EventLog.open(path)
        written = log.append(batch, now=data.draw(st.floats(0, 2e9)))
        log.close()
        log = EventLog.open(path)
        try:
            assert list(log.records()) == written
            assert [(r.event, r.origin) for r in written] == batch
            assert log.last_seq == len(batch) and log.torn is None
        finally:
            log.close()


@given(event=any_event, origin=origins)
def test_encoding_is_one_crc_line_per_record(event: GraceTimeSet, origin: Origin) -> None:
    record = Record(seq=1, time=1.5, v=SCHEMA_VERSION, origin=origin, event=event)
    encoded = line(record)
    assert encoded.count(b"\n") == 1 and encoded[8:9] == b" "
    assert decode_record(encoded[9:-1]) == record


def test_create_makes_parent_dir_and_empty_log(log_path: Path) -> None:
    log = EventLog.open(log_path)
    assert log_path.exists() and log.last_seq == 0 and log.size_bytes == 0
    assert list(log.records()) == []
    log.close()


def test_a_second_open_is_refused_while_locked(opened: EventLog, log_path: Path) -> None:
    with pytest.raises(OSError, match="open for writing elsewhere"):
        EventLog.open(log_path)


def test_readonly_open_reads_a_live_log_without_cutting(opened: EventLog, log_path: Path) -> None:
    written = opened.append([(prop(1), Origin()), (prop(2), Origin())], now=0.0)
    with open(log_path, "ab") as f:
        f.write(b"0badc0de {half a batch being written")  # as seen mid-write
    reader = EventLog.open(log_path, readonly=True)
    assert list(reader.records()) == written and reader.torn is not None
    with pytest.raises(OSError, match="read-only"):
        reader.append([(prop(3), Origin())], now=0.0)
    reader.close()
    assert log_path.read_bytes().endswith(b"being written"), "a reader never cuts"


def test_appends_continue_after_reopen(log_path: Path) -> None:
    first = fill(log_path, 5)
    log = EventLog.open(log_path)
    more = log.append([(prop(9), Origin(request_id="r1"))], now=5.0)
    assert more[0].seq == 6
    assert list(log.records()) == [*first, *more]
    assert list(log.records(since=4)) == [first[4], *more]
    log.close()


def test_records_since_seeks_with_the_index(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_module, "INDEX_EVERY", 4)
    written = fill(log_path, 30, per_batch=7)
    log = EventLog.open(log_path)
    log.append([(prop(1), Origin())] * 5, now=1.0)
    everything = list(log.records())
    assert everything[:30] == written and len(everything) == 35
    for since in range(-1, 37):
        assert list(log.records(since)) == [r for r in everything if r.seq > since]
    log.close()


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=1, max_value=400), count=st.integers(1, 8))
def test_torn_tail_is_cut_and_appends_continue(cut: int, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.log"
        written = fill(path, count)
        data = path.read_bytes()
        cut = min(cut, len(data))
        os.truncate(path, len(data) - cut)
        complete = data[: len(data) - cut].count(b"\n")
        log = EventLog.open(path)
        try:
            assert log.last_seq == complete
            assert list(log.records()) == written[:complete]
            assert (log.torn is None) == (
                data[len(data) - cut - 1 : len(data) - cut] in (b"\n", b"")
            )
            assert path.stat().st_size == log.size_bytes
            [new] = log.append([(prop(99), Origin())], now=2.0)
            assert new.seq == complete + 1
        finally:
            log.close()
        log = EventLog.open(path)
        assert log.last_seq == complete + 1 and log.torn is None
        log.close()


@pytest.mark.parametrize(
    "tail",
    [b"\0" * 300, b"deadbeef {}\n", b"0000000z " + b"x" * 40 + b"\n", b"\n", b"junk\n\0\0\0"],
)
def test_damaged_last_lines_are_cut(log_path: Path, tail: bytes) -> None:
    written = fill(log_path, 4)
    good = log_path.stat().st_size
    with open(log_path, "ab") as f:
        f.write(tail)
    log = EventLog.open(log_path)
    assert log.torn is not None and log.torn.offset == good
    assert log.torn.dropped_bytes == len(tail)
    assert list(log.records()) == written and log_path.stat().st_size == good
    log.close()


def test_corrupt_middle_record_is_fatal_with_its_offset(log_path: Path) -> None:
    fill(log_path, 10)
    data = bytearray(log_path.read_bytes())
    offset = sum(len(x) for x in data.splitlines(keepends=True)[:4])
    data[offset + 30] ^= 0x01  # one bit flipped in the JSON of record 5
    log_path.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError) as caught:
        EventLog.open(log_path)
    assert caught.value.offset == offset
    assert caught.value.path == str(log_path)
    assert log_path.read_bytes() == data, "a corrupt log is never modified"


def test_damage_followed_by_only_damage_is_a_torn_tail(log_path: Path) -> None:
    fill(log_path, 3)
    with open(log_path, "ab") as f:
        f.write(b"bad line one\nbad line two\npartial")
    log = EventLog.open(log_path)
    assert log.last_seq == 3 and log.torn is not None
    log.close()


def _write_seqs(path: Path, seqs: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"".join(
            line(Record(seq=s, time=0.0, v=SCHEMA_VERSION, origin=Origin(), event=prop(s)))
            for s in seqs
        )
    )


@pytest.mark.parametrize(
    ("seqs", "bad_index"),
    [([1, 2, 4], 2), ([1, 2, 2, 3], 2), ([2, 3], 0), ([1, 2, 3, 5], 3), ([1, 3, 2], 1)],
)
def test_seq_gap_or_repeat_is_corruption(log_path: Path, seqs: list[int], bad_index: int) -> None:
    _write_seqs(log_path, seqs)
    lines = log_path.read_bytes().splitlines(keepends=True)
    with pytest.raises(LogCorruptError, match="seq") as caught:
        EventLog.open(log_path)
    assert caught.value.offset == sum(len(x) for x in lines[:bad_index])


def test_record_that_no_longer_decodes_is_corruption_even_at_the_end(log_path: Path) -> None:
    fill(log_path, 2)
    raw = msgspec.to_builtins(
        Record(seq=3, time=0.0, v=SCHEMA_VERSION, origin=Origin(), event=prop(3))
    )
    raw["event"]["type"] = "NoSuchEvent"
    with open(log_path, "ab") as f:
        f.write(line(raw))
    log = EventLog.open(log_path)  # the checksum is good, so it is not a torn write...
    with pytest.raises(LogCorruptError, match="NoSuchEvent"):
        list(log.records())  # ...and replay refuses it
    log.close()


def test_newer_schema_version_is_refused(log_path: Path) -> None:
    _write_seqs(log_path, [1])
    raw = msgspec.to_builtins(
        Record(seq=2, time=0.0, v=SCHEMA_VERSION + 1, origin=Origin(), event=prop(2))
    )
    with open(log_path, "ab") as f:
        f.write(line(raw))
    log = EventLog.open(log_path)
    with pytest.raises(LogCorruptError, match="schema version"):
        list(log.records())
    log.close()


def test_older_records_go_through_upcast(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = {
        "seq": 1,
        "time": 0.0,
        "v": 0,
        "origin": {},
        "event": {"type": "PropertySet", "handle": "h", "k": "a", "value": "b"},
    }
    log_path.parent.mkdir(parents=True)
    log_path.write_bytes(line(old))
    seen: list[dict[str, object]] = []

    def v0_to_v1(raw: dict[str, object]) -> dict[str, object]:
        seen.append(dict(raw))
        event = dict(raw["event"])  # type: ignore[call-overload]
        event["key"] = event.pop("k")
        return {**raw, "event": event, "v": 1}

    log = EventLog.open(log_path)
    with pytest.raises(LogCorruptError, match="no upcaster from schema version 0"):
        list(log.records())
    monkeypatch.setattr(log_module, "upcast", v0_to_v1)
    [record] = log.records()
    assert record.event == prop(0).__class__(handle="h", key="a", value="b") and record.v == 1
    assert seen and seen[0]["v"] == 0
    log.close()


def test_unrepresentable_event_is_refused_before_writing(opened: EventLog) -> None:
    with pytest.raises(ValueError, match=r"round trip|cannot be logged"):
        opened.append(
            [(prop(1), Origin()), (GraceTimeSet(handle="h", grace_time=float("nan")), Origin())],
            0.0,
        )
    assert opened.last_seq == 0 and opened.size_bytes == 0


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_failed_append_rewinds_and_the_log_stays_usable(
    opened: EventLog, log_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    opened.append([(prop(1), Origin())], now=0.0)
    size = opened.size_bytes
    real_write = os.write

    def short_write_then_enospc(fd: int, data: memoryview) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    real_fsync = os.fsync
    fsyncs: list[int] = []

    def first_fsync_fails(fd: int) -> None:
        fsyncs.append(fd)
        if len(fsyncs) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    if failing == "write":
        monkeypatch.setattr(os, "write", short_write_then_enospc)
    else:
        monkeypatch.setattr(os, "fsync", first_fsync_fails)
    with pytest.raises(OSError):
        opened.append([(prop(2), Origin()), (prop(3), Origin())], now=1.0)
    monkeypatch.undo()
    assert opened.last_seq == 1 and opened.size_bytes == size == log_path.stat().st_size
    [again] = opened.append([(prop(2), Origin())], now=2.0)
    assert again.seq == 2
    assert [r.seq for r in opened.records()] == [1, 2]


def test_failed_rewind_makes_the_log_refuse_appends(
    opened: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    monkeypatch.setattr(os, "ftruncate", broken)
    with pytest.raises(OSError):
        opened.append([(prop(1), Origin())], now=0.0)
    monkeypatch.undo()
    with pytest.raises(OSError, match="unusable"):
        opened.append([(prop(1), Origin())], now=0.0)


def test_repair_copies_the_valid_prefix_and_keeps_the_original(log_path: Path) -> None:
    written = fill(log_path, 10)
    data = bytearray(log_path.read_bytes())
    lines = bytes(data).splitlines(keepends=True)
    offset = sum(len(x) for x in lines[:6])
    data[offset + 20] ^= 0x04
    log_path.write_bytes(bytes(data))

    report = repair(log_path)

    assert log_path.read_bytes() == data
    assert report.kept_records == report.last_seq == 6
    assert report.damage_offset == offset and report.reason == "checksum mismatch"
    assert report.dropped_valid == 3 and report.dropped_bytes == len(data) - offset
    repaired = EventLog.open(Path(report.repaired))
    assert list(repaired.records()) == written[:6] and repaired.torn is None
    repaired.close()


def test_repair_of_a_healthy_log_keeps_everything(log_path: Path) -> None:
    written = fill(log_path, 5)
    report = repair(log_path)
    assert report.kept_records == 5 and report.damage_offset is None and report.dropped_bytes == 0
    assert Path(report.repaired).read_bytes() == log_path.read_bytes()
    assert written[-1].seq == report.last_seq


def test_repair_stops_at_a_seq_gap(log_path: Path) -> None:
    _write_seqs(log_path, [1, 2, 4, 5])
    report = repair(log_path)
    assert report.kept_records == 2 and "seq 4" in report.reason and report.dropped_valid == 1
