"""`garden events verify` on real files: a log written by `EventLog` and a snapshot written by
`write_snapshot`, then damaged the ways a disk or an operator damages them; each finding is
reported with its kind and byte offset, and the command exits 1 (0 when all is well)."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import msgspec
import pytest

from garden.events.log import EventLog
from garden.events.snapshot import (
    SNAPSHOT_FILE,
    Snapshot,
    capture,
    read_snapshot,
    write_snapshot,
)
from garden.events.state import ServerState, evolve
from garden.events.verify import verify

from .history import history


def write_state_dir(state_dir: Path, snapshot_after: int | None = 40) -> list[bytes]:
    """A log of 8 containers' history (about 100 records), a snapshot after record
    `snapshot_after`; the log's lines."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog.open(state_dir / "events.log")
    state = ServerState()
    for batch in history(8, 12, batch=1):
        for record in log.append(batch, now=1.0):
            evolve(state, record)
        if log.last_seq == snapshot_after:
            write_snapshot(state_dir / SNAPSHOT_FILE, capture(state, log.position))
    log.close()
    return (state_dir / "events.log").read_bytes().splitlines(keepends=True)


def rewrite(state_dir: Path, lines: list[bytes]) -> None:
    (state_dir / "events.log").write_bytes(b"".join(lines))


def offset_of(lines: list[bytes], index: int) -> int:
    return sum(map(len, lines[:index]))


def kinds(state_dir: Path) -> list[tuple[str, int | None]]:
    return [(f.kind, f.offset) for f in verify(state_dir).findings]


def test_a_sound_log_and_snapshot_verify_clean(tmp_path: Path) -> None:
    lines = write_state_dir(tmp_path)
    report = verify(tmp_path)
    assert report.ok and report.findings == []
    assert report.records == report.last_seq == len(lines)
    assert report.snapshot_seq == 40
    assert report.containers == 8


def test_a_corrupted_line_in_the_middle_is_found_at_its_offset(tmp_path: Path) -> None:
    lines = write_state_dir(tmp_path)
    lines[30] = b"garbage that is no record\n"
    rewrite(tmp_path, lines)
    assert ("corrupt-line", offset_of(lines, 30)) in kinds(tmp_path)
    assert not verify(tmp_path).ok


def test_a_checksum_mismatch_is_found_at_its_offset(tmp_path: Path) -> None:
    lines = write_state_dir(tmp_path)
    line = lines[20]
    lines[20] = line.replace(b'"seq":21', b'"seq":21 ', 1)  # the JSON changed, not its crc
    assert lines[20] != line
    rewrite(tmp_path, lines)
    found = kinds(tmp_path)
    assert ("checksum-mismatch", offset_of(lines, 20)) in found
    # The record is lost to the replay: the next one is reported as a gap as well.
    assert ("seq-gap", offset_of(lines, 21)) in found


def test_a_torn_tail_is_reported_as_what_the_server_cuts(tmp_path: Path) -> None:
    lines = write_state_dir(tmp_path)
    lines[-1] = lines[-1][: len(lines[-1]) // 2]  # a write cut short by a crash
    rewrite(tmp_path, lines)
    report = verify(tmp_path)
    assert [(f.kind, f.offset) for f in report.findings] == [
        ("torn-tail", offset_of(lines, len(lines) - 1))
    ]
    assert "unterminated" in report.findings[0].detail
    assert report.last_seq == len(lines) - 1


def test_a_gap_in_sequence_numbers_is_found(tmp_path: Path) -> None:
    lines = write_state_dir(tmp_path)
    del lines[60]  # a whole record gone: every checksum still matches
    rewrite(tmp_path, lines)
    report = verify(tmp_path)
    gaps = [f for f in report.findings if f.kind == "seq-gap"]
    assert [(f.offset, f.seq) for f in gaps] == [(offset_of(lines, 60), 62)]
    assert "where 61 was expected" in gaps[0].detail


def test_a_repeated_record_is_found(tmp_path: Path) -> None:
    lines = write_state_dir(tmp_path)
    lines.insert(51, lines[50])
    rewrite(tmp_path, lines)
    assert ("seq-repeat", offset_of(lines, 51)) in kinds(tmp_path)


def test_a_snapshot_whose_state_differs_from_the_replay_is_found(tmp_path: Path) -> None:
    write_state_dir(tmp_path)
    path = tmp_path / SNAPSHOT_FILE
    snapshot = read_snapshot(path)
    assert snapshot is not None
    handle = sorted(snapshot.containers)[0]
    forged = msgspec.structs.replace(
        snapshot.containers[handle], properties={"owner": "someone else"}
    )
    write_snapshot(
        path,
        Snapshot(position=snapshot.position, containers={**snapshot.containers, handle: forged}),
    )
    report = verify(tmp_path)
    [finding] = report.findings
    assert finding.kind == "snapshot-state" and finding.seq == 40
    assert handle in finding.detail


def test_a_snapshot_ahead_of_the_log_is_found(tmp_path: Path) -> None:
    lines = write_state_dir(tmp_path)
    rewrite(tmp_path, lines[:30])  # the log cut back before the snapshot's record
    assert kinds(tmp_path) == [("snapshot-position", None)]


def test_a_snapshot_naming_another_record_is_found(tmp_path: Path) -> None:
    """The snapshot's seq is in the log, but not with the checksum it names: it was taken of
    another log (or this one was rewritten)."""
    write_state_dir(tmp_path)
    data = (tmp_path / SNAPSHOT_FILE).read_bytes()
    head, rest = data.split(b"\n", 1)
    header = json.loads(head[9:])
    header["position"]["crc"] ^= 1
    body = json.dumps(header, separators=(",", ":")).encode()
    (tmp_path / SNAPSHOT_FILE).write_bytes(b"%08x %s\n" % (zlib.crc32(body), body) + rest)
    assert [k for k, _ in kinds(tmp_path)] == ["snapshot-position"]


def test_an_unreadable_snapshot_is_found(tmp_path: Path) -> None:
    write_state_dir(tmp_path)
    data = (tmp_path / SNAPSHOT_FILE).read_bytes()
    (tmp_path / SNAPSHOT_FILE).write_bytes(data[: len(data) // 2])
    report = verify(tmp_path)
    assert [f.kind for f in report.findings] == ["snapshot-unreadable"]
    assert not report.ok


@pytest.mark.parametrize("damage", ["none", "checksum"])
def test_cli_events_verify_exit_status_and_output(tmp_path: Path, damage: str) -> None:
    lines = write_state_dir(tmp_path)
    if damage == "checksum":
        lines[10] = lines[10].replace(b'"time":1.0', b'"time":2.0', 1)
        rewrite(tmp_path, lines)
    proc = subprocess.run(
        [sys.executable, "-m", "garden.cli", "events", "verify", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if damage == "none":
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"ok: {len(lines)} records")
    else:
        assert proc.returncode == 1, proc.stderr
        first = proc.stdout.splitlines()[0]
        assert first.startswith(f"error: checksum-mismatch at byte {offset_of(lines, 10)}:")
        assert "DAMAGED" in proc.stdout
