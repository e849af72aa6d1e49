"""Snapshots: the file round trip, start-up from a snapshot and the tail of the log, and every
way a snapshot can be unusable falling back to replaying the whole log."""

from __future__ import annotations

import ast
import inspect
import logging
import sys
import tempfile
import zlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garden.errors import LogCorruptError
from garden.events import schema as ev
from garden.events import snapshot as snapshot_module
from garden.events import state as state_module
from garden.events.log import EventLog, LogPosition
from garden.events.snapshot import (
    SNAPSHOT_FILE,
    Snapshot,
    SnapshotError,
    capture,
    decode_snapshot,
    encode_snapshot,
    read_snapshot,
    restore,
    state_code_version,
    write_snapshot,
)
from garden.events.state import ServerState, evolve, replay

from .history import history
from .strategies import any_event

HANDLES = st.sampled_from(["a", "b", "c"])
PROCESS_IDS = st.sampled_from(["p1", "p2"])


@st.composite
def related_events(draw: st.DrawFn) -> ev.AnyEvent:
    """Any event, about one of a few handles and process ids, so that they build on each other."""
    event = draw(any_event)
    changes: dict[str, object] = {}
    if hasattr(event, "handle"):
        changes["handle"] = draw(HANDLES)
    if hasattr(event, "process_id"):
        changes["process_id"] = draw(PROCESS_IDS)
    related: ev.AnyEvent = msgspec.structs.replace(event, **changes)
    return related


def records_of(events: list[ev.AnyEvent]) -> list[ev.Record]:
    return [
        ev.Record(seq=i, time=float(i), v=ev.SCHEMA_VERSION, origin=ev.Origin(), event=e)
        for i, e in enumerate(events, 1)
    ]


def at(state: ServerState) -> LogPosition:
    """A position for `state` where no log is involved."""
    return LogPosition(seq=state.last_seq, offset=1000 + state.last_seq, crc=7, length=100)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(related_events(), max_size=40))
def test_snapshot_round_trip_equals_the_live_state(events: list[ev.AnyEvent]) -> None:
    live = replay(records_of(events))
    back = decode_snapshot(encode_snapshot(capture(live, at(live)), written_at=1.0))
    restored = back.state()
    assert restored.last_seq == live.last_seq and back.position == at(live)
    assert restored.containers == live.containers
    assert msgspec.to_builtins(restored.containers) == msgspec.to_builtins(live.containers)


def test_capture_refuses_a_state_that_is_not_at_the_position() -> None:
    live = replay(records_of([ev.ServerStarted(version="1", pid=1)]))
    with pytest.raises(ValueError, match="seq 1"):
        capture(live, LogPosition(seq=2, offset=10, crc=1, length=20))


def test_capture_is_a_copy_the_state_can_move_on_from() -> None:
    live = ServerState()
    batches = list(history(3, 10, batch=10))
    for record in records_of([e for e, _ in batches[0]]):
        evolve(live, record)
    snapshot = capture(live, at(live))
    before = msgspec.json.encode(snapshot.containers)
    for record in records_of([e for b in batches for e, _ in b])[10:]:
        evolve(live, record)
    assert msgspec.json.encode(snapshot.containers) == before


def write_log(path: Path, containers: int, per_container: int) -> list[LogPosition]:
    """A log of the synthetic history; the position after each batch of 7 records."""
    log = EventLog.open(path)
    positions = []
    for batch in history(containers, per_container, batch=7):
        log.append(batch, now=1.0)
        positions.append(log.position)
    log.close()
    return positions


def full_replay(path: Path) -> ServerState:
    log = EventLog.open(path, readonly=True)
    try:
        return replay(log.records())
    finally:
        log.close()


def snapshot_at(log_path: Path, position: LogPosition) -> Snapshot:
    log = EventLog.open(log_path, readonly=True)
    state = ServerState()
    for record in log.records():
        if record.seq > position.seq:
            break
        evolve(state, record)
    log.close()
    return capture(state, position)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir()
    return tmp_path / "state"


@pytest.mark.parametrize("which", [0, 1, 5, -2, -1])
def test_restart_with_snapshot_and_tail_equals_full_replay(state_dir: Path, which: int) -> None:
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    positions = write_log(log_path, 4, 30)
    position = positions[which]
    write_snapshot(snapshot_path, snapshot_at(log_path, position))
    restored = restore(log_path, snapshot_path)
    restored.log.close()
    full = full_replay(log_path)
    assert restored.snapshot_seq == position.seq
    assert restored.replayed == full.last_seq - position.seq
    assert restored.state.last_seq == full.last_seq == 120
    assert restored.state.containers == full.containers
    assert restored.log.resumed_at == position


@settings(max_examples=25, deadline=None)
@given(split=st.integers(0, 60), events=st.lists(related_events(), min_size=1, max_size=60))
def test_any_snapshot_point_gives_the_state_of_a_full_replay(
    split: int, events: list[ev.AnyEvent]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log_path, snapshot_path = Path(tmp) / "events.log", Path(tmp) / SNAPSHOT_FILE
        log = EventLog.open(log_path)
        live = ServerState()
        for i, event in enumerate(events):
            for record in log.append([(event, ev.Origin())], now=1.0):
                evolve(live, record)
            if i + 1 == split:
                write_snapshot(snapshot_path, capture(live, log.position))
        log.close()
        restored = restore(log_path, snapshot_path)
        restored.log.close()
        assert restored.snapshot_seq == (split if split <= len(events) else 0)
        assert restored.state.last_seq == live.last_seq
        assert restored.state.containers == live.containers


def test_no_snapshot_is_a_full_replay(state_dir: Path) -> None:
    write_log(state_dir / "events.log", 2, 5)
    restored = restore(state_dir / "events.log", state_dir / SNAPSHOT_FILE)
    restored.log.close()
    assert restored.snapshot_seq == 0 and restored.replayed == 10
    assert restored.log.resumed_at == LogPosition()


def rewrite_header(data: bytes, **changes: object) -> bytes:
    header, rest = data.split(b"\n", 1)
    fields = msgspec.json.decode(header[9:])
    fields.update(changes)
    body = msgspec.json.encode(fields)
    return b"%08x %s\n%s" % (zlib.crc32(body), body, rest)


def damaged(data: bytes, how: str) -> bytes:
    header = data.split(b"\n", 1)[0]
    match how:
        case "truncated":
            return data[: len(data) // 2]
        case "empty":
            return b""
        case "flipped-bit":
            return data[:-20] + bytes([data[-20] ^ 4]) + data[-19:]
        case "changed-value":  # still valid JSON: only the checksum tells
            return data.replace(b'"value-', b'"VALUE-', 1)
        case "garbage":
            return b"\x00\xff" * 50
        case "header-only":
            return header + b"\n"
        case "newer-format":
            return rewrite_header(data, format=99)
        case "other-code":
            return rewrite_header(data, code="0123456789abcdef")
        case "header-count":
            return rewrite_header(data, containers=1)
        case "header-not-json":
            return rewrite_header(data, position="here")
    raise AssertionError(how)


HOW = [
    "truncated",
    "empty",
    "flipped-bit",
    "changed-value",
    "garbage",
    "header-only",
    "newer-format",
    "other-code",
    "header-count",
    "header-not-json",
]


@pytest.mark.parametrize("how", HOW)
def test_unusable_snapshot_falls_back_to_full_replay(
    state_dir: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    positions = write_log(log_path, 3, 20)
    write_snapshot(snapshot_path, snapshot_at(log_path, positions[4]))
    snapshot_path.write_bytes(damaged(snapshot_path.read_bytes(), how))
    with pytest.raises(SnapshotError):
        read_snapshot(snapshot_path)
    with caplog.at_level(logging.WARNING):
        restored = restore(log_path, snapshot_path)
    restored.log.close()
    assert restored.snapshot_seq == 0 and restored.replayed == 60
    assert restored.state.containers == full_replay(log_path).containers
    assert "snapshot-ignored" in caplog.text


def test_snapshot_that_cannot_be_read_falls_back(state_dir: Path) -> None:
    write_log(state_dir / "events.log", 1, 5)
    (state_dir / SNAPSHOT_FILE).mkdir()
    with pytest.raises(SnapshotError, match="cannot read"):
        read_snapshot(state_dir / SNAPSHOT_FILE)
    restored = restore(state_dir / "events.log", state_dir / SNAPSHOT_FILE)
    restored.log.close()
    assert restored.snapshot_seq == 0 and restored.state.last_seq == 5


def renamed(event: ev.AnyEvent) -> ev.AnyEvent:
    """The same event about container xtr-N instead of ctr-N: as long, other bytes."""
    assert not isinstance(event, ev.ServerStarted | ev.ResourceSwept)
    other: ev.AnyEvent = msgspec.structs.replace(event, handle=f"x{event.handle[1:]}")
    return other


def test_snapshot_of_another_log_falls_back(state_dir: Path, tmp_path: Path) -> None:
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    other = tmp_path / "other.log"
    other_positions = write_log(other, 3, 20)
    write_snapshot(snapshot_path, snapshot_at(other, other_positions[3]))
    log = EventLog.open(log_path)  # same length, other content
    for batch in history(3, 20, batch=7):
        log.append([(renamed(e), o) for e, o in batch], now=1.0)
    log.close()
    assert log_path.stat().st_size == other.stat().st_size
    restored = restore(log_path, snapshot_path)
    restored.log.close()
    assert restored.snapshot_seq == 0
    assert sorted(restored.state.containers) == ["xtr-00000", "xtr-00001", "xtr-00002"]


def test_snapshot_ahead_of_the_log_falls_back(state_dir: Path) -> None:
    """The log was cut back (a repair, a restore from backup): the log decides."""
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    positions = write_log(log_path, 2, 20)
    write_snapshot(snapshot_path, snapshot_at(log_path, positions[-1]))
    short = log_path.read_bytes()[: positions[2].offset]
    log_path.write_bytes(short)
    restored = restore(log_path, snapshot_path)
    restored.log.close()
    assert restored.snapshot_seq == 0 and restored.state.last_seq == positions[2].seq


def test_snapshot_without_a_log_falls_back_to_an_empty_state(state_dir: Path) -> None:
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    positions = write_log(log_path, 2, 5)
    write_snapshot(snapshot_path, snapshot_at(log_path, positions[-1]))
    log_path.unlink()
    restored = restore(log_path, snapshot_path)
    restored.log.close()
    assert restored.snapshot_seq == 0 and restored.state.containers == {}


def test_torn_tail_after_the_snapshot_is_cut(state_dir: Path) -> None:
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    positions = write_log(log_path, 2, 20)
    write_snapshot(snapshot_path, snapshot_at(log_path, positions[2]))
    with open(log_path, "ab") as f:
        f.write(b"0badc0de {half")
    restored = restore(log_path, snapshot_path)
    assert restored.snapshot_seq == positions[2].seq
    assert restored.log.torn is not None and restored.log.position == positions[-1]
    assert log_path.stat().st_size == positions[-1].offset
    restored.log.close()
    assert restored.state.containers == full_replay(log_path).containers


def test_corruption_after_the_snapshot_still_refuses_to_start(state_dir: Path) -> None:
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    positions = write_log(log_path, 2, 20)
    write_snapshot(snapshot_path, snapshot_at(log_path, positions[2]))
    data = bytearray(log_path.read_bytes())
    data[positions[4].offset + 30] ^= 1
    log_path.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError):
        restore(log_path, snapshot_path)


def test_write_replaces_atomically_and_leaves_no_temp_file(state_dir: Path) -> None:
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    positions = write_log(log_path, 2, 10)
    first = write_snapshot(snapshot_path, snapshot_at(log_path, positions[0]))
    assert first == snapshot_path.stat().st_size
    write_snapshot(snapshot_path, snapshot_at(log_path, positions[-1]))
    assert sorted(p.name for p in state_dir.iterdir()) == ["events.log", SNAPSHOT_FILE]
    assert snapshot_path.stat().st_mode & 0o777 == 0o600
    got = read_snapshot(snapshot_path)
    assert got is not None and got.position == positions[-1]


def test_a_stale_temp_file_from_a_crash_is_ignored_and_replaced(state_dir: Path) -> None:
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    positions = write_log(log_path, 2, 10)
    (state_dir / (SNAPSHOT_FILE + ".tmp")).write_bytes(b"half a snap")
    restored = restore(log_path, snapshot_path)
    restored.log.close()
    assert restored.snapshot_seq == 0
    write_snapshot(snapshot_path, snapshot_at(log_path, positions[-1]))
    assert sorted(p.name for p in state_dir.iterdir()) == ["events.log", SNAPSHOT_FILE]


def test_header_says_where_it_stands(state_dir: Path) -> None:
    log_path, snapshot_path = state_dir / "events.log", state_dir / SNAPSHOT_FILE
    positions = write_log(log_path, 2, 10)
    write_snapshot(snapshot_path, snapshot_at(log_path, positions[-1]))
    header = msgspec.json.decode(snapshot_path.read_bytes().split(b"\n")[0][9:])
    assert header["format"] == 1 and header["code"] == state_code_version()
    assert header["position"]["seq"] == 20 and header["containers"] == 2


def test_code_version_covers_every_module_the_state_is_built_from() -> None:
    """A module that evolve or the events take types from, left out of the digest, could
    change what a replay builds without making old snapshots unusable."""
    covered = {m.__name__ for m in snapshot_module._STATE_CODE}
    for module in (state_module, ev):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("garden"):
                assert node.module is not None
                submodules = {f"{node.module}.{a.name}" for a in node.names}
                imported = (submodules & set(sys.modules)) or {node.module}
                assert imported <= covered, f"{module.__name__} uses {imported - covered}"
