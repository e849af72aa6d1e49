"""Opening the log at a `LogPosition`: the one-read check, the scan of the tail only, and
`records(since)` and `verify()` for the history before the position."""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path

import msgspec
import pytest

from garden.errors import LogCorruptError
from garden.events import log as log_module
from garden.events.log import EventLog, LogPosition, PositionMismatchError
from garden.events.schema import Origin, Record

from .conftest import fill, prop


def position_after(path: Path, seq: int) -> LogPosition:
    """The position of record `seq`, worked out from the file by hand."""
    lines = path.read_bytes().splitlines(keepends=True)[:seq]
    last = lines[-1]
    return LogPosition(
        seq=seq, offset=sum(map(len, lines)), crc=zlib.crc32(last[9:-1]), length=len(last)
    )


def test_position_describes_the_last_record(log_path: Path) -> None:
    written = fill(log_path, 10, per_batch=4)
    log = EventLog.open(log_path)
    assert log.position == position_after(log_path, 10)
    assert log.position.offset == log.size_bytes == log_path.stat().st_size
    [more] = log.append([(prop(10), Origin())], now=1.0)
    assert log.position == position_after(log_path, 11)
    log.close()
    assert more.seq == len(written) + 1
    assert EventLog.open(log_path, readonly=True).position == position_after(log_path, 11)


def test_position_of_an_empty_log_is_the_start(log_path: Path) -> None:
    log = EventLog.open(log_path)
    assert log.position == LogPosition()
    log.close()
    log = EventLog.open(log_path, resume=LogPosition())
    assert log.position == LogPosition() and list(log.records()) == []
    log.close()


@pytest.mark.parametrize("seq", [1, 5, 12, 20])
def test_resumed_open_matches_a_full_open(
    log_path: Path, monkeypatch: pytest.MonkeyPatch, seq: int
) -> None:
    monkeypatch.setattr(log_module, "INDEX_EVERY", 4)
    written = fill(log_path, 20, per_batch=3)
    log = EventLog.open(log_path, resume=position_after(log_path, seq))
    assert log.resumed_at.seq == seq
    assert (log.last_seq, log.position, log.torn) == (20, position_after(log_path, 20), None)
    assert list(log.records(since=seq)) == written[seq:]
    more = log.append([(prop(i), Origin()) for i in range(5)], now=2.0)
    everything = [*written, *more]
    for since in range(-1, 27):
        assert list(log.records(since)) == everything[max(since, 0) :], since
    log.close()


def test_resume_reads_only_the_tail(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(log_path, 50)
    at = position_after(log_path, 40)
    scanned: list[int] = []
    real_scan = log_module._scan

    def spying(path: Path, start: LogPosition, stop: int | None = None) -> object:
        scanned.append(start.offset)
        return real_scan(path, start, stop)

    monkeypatch.setattr(log_module, "_scan", spying)
    log = EventLog.open(log_path, resume=at)
    assert scanned == [at.offset]
    list(log.records(since=45))
    assert scanned == [at.offset], "reading the tail does not scan the history"
    list(log.records(since=3))
    assert scanned == [at.offset, 0], "reading the history checks it first, once"
    list(log.records(since=0))
    assert scanned == [at.offset, 0]
    log.close()


def mismatches(path: Path) -> list[LogPosition]:
    good = position_after(path, 6)
    replace = msgspec.structs.replace
    return [
        replace(good, crc=good.crc ^ 1),
        replace(good, seq=5),
        replace(good, seq=7),
        replace(good, offset=good.offset + 1),
        replace(good, offset=good.offset - 1),
        replace(good, length=good.length - 1),  # a whole-looking line that starts mid-line
        replace(good, offset=path.stat().st_size + good.length),
        replace(good, length=3),
        LogPosition(seq=0, offset=10),
    ]


def test_a_position_the_file_does_not_hold_is_refused(log_path: Path) -> None:
    fill(log_path, 10)
    for position in mismatches(log_path):
        with pytest.raises(PositionMismatchError):
            EventLog.open(log_path, resume=position)
        with pytest.raises(PositionMismatchError):
            EventLog.open(log_path, resume=position, readonly=True)
    log = EventLog.open(log_path)  # the failed opens left nothing locked or cut
    assert log.last_seq == 10
    log.close()


def test_a_position_past_a_shorter_log_is_refused(log_path: Path) -> None:
    fill(log_path, 10)
    at = position_after(log_path, 10)
    os.truncate(log_path, position_after(log_path, 7).offset)  # e.g. a repaired log
    with pytest.raises(PositionMismatchError):
        EventLog.open(log_path, resume=at)


def test_torn_tail_after_the_position_is_cut(log_path: Path) -> None:
    written = fill(log_path, 10)
    at = position_after(log_path, 8)
    with open(log_path, "ab") as f:
        f.write(b"0badc0de {half a record")
    log = EventLog.open(log_path, resume=at)
    assert log.torn is not None and log.torn.offset == position_after(log_path, 10).offset
    assert log_path.stat().st_size == log.size_bytes
    assert log.position == position_after(log_path, 10)
    assert list(log.records()) == written
    [new] = log.append([(prop(10), Origin())], now=3.0)
    assert new.seq == 11
    log.close()


def test_torn_tail_right_at_the_position_is_cut(log_path: Path) -> None:
    fill(log_path, 10)
    at = position_after(log_path, 10)
    with open(log_path, "ab") as f:
        f.write(b"\0" * 100)
    log = EventLog.open(log_path, resume=at)
    assert log.torn is not None and log.position == at and log.size_bytes == at.offset
    log.close()


def test_damage_after_the_position_is_still_fatal(log_path: Path) -> None:
    fill(log_path, 10)
    at = position_after(log_path, 5)
    data = bytearray(log_path.read_bytes())
    data[position_after(log_path, 7).offset + 20] ^= 1
    log_path.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError, match="valid records follow"):
        EventLog.open(log_path, resume=at)


def test_damage_before_the_position_shows_on_read_and_verify(log_path: Path) -> None:
    fill(log_path, 10)
    at = position_after(log_path, 8)
    data = bytearray(log_path.read_bytes())
    damaged = position_after(log_path, 2).offset
    data[damaged + 20] ^= 1
    log_path.write_bytes(bytes(data))
    log = EventLog.open(log_path, resume=at)  # not read: not noticed
    assert len(list(log.records(since=8))) == 2
    with pytest.raises(LogCorruptError) as caught:
        log.verify()
    assert caught.value.offset == damaged
    with pytest.raises(LogCorruptError):
        list(log.records(since=0))
    log.close()
    with pytest.raises(LogCorruptError):
        EventLog.open(log_path)


def test_verify_of_a_sound_history_and_after_a_full_open(log_path: Path) -> None:
    fill(log_path, 10)
    log = EventLog.open(log_path, resume=position_after(log_path, 6))
    log.verify()
    log.close()
    log = EventLog.open(log_path)
    log.verify()
    log.close()


def test_history_read_from_threads_at_once_is_checked_once(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_module, "INDEX_EVERY", 8)
    written = fill(log_path, 400, per_batch=50)
    log = EventLog.open(log_path, resume=position_after(log_path, 390))
    results: list[list[Record]] = []
    barrier = threading.Barrier(4)

    def read(since: int) -> None:
        barrier.wait()
        results.append(list(log.records(since)))

    threads = [threading.Thread(target=read, args=(since,)) for since in (0, 17, 100, 389)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(map(len, results)) == [11, 300, 383, 400]
    assert all(r == written[-len(r) :] for r in results)
