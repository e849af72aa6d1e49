"""Snapshots of the replayed state: the file format, the atomic write, and start-up from one.

A snapshot is the `ServerState` as of record N and the `LogPosition` of N in `events.log`; a
start loads it, checks that the log still holds record N where it says (one small read), and
replays only the records after N. It is only ever a shortcut: a snapshot that is missing,
unreadable, written by other code, or that does not match the log is ignored with a warning
and the whole log is replayed. The log is never rewritten or shortened because of one.

The file, `<state-dir>/snapshot.json`, has two lines in the log's line format,
`<crc32 of the JSON, 8 hex> <JSON>`: a small header (`head -1` shows where it stands) and then
the containers. It is replaced atomically: temp file, fsync, rename, fsync of the directory.
The functions here block on disk I/O and CPU: from trio, call them in a worker thread.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import logging
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Final, final

import msgspec

from garden import __version__, api, faults, limits
from garden.events import schema, state
from garden.events.log import EventLog, LogPosition, PositionMismatchError
from garden.events.state import ContainerState, ServerState, evolve
from garden.linux import plan

log = logging.getLogger("garden.events.snapshot")

SNAPSHOT_FORMAT: Final = 1
SNAPSHOT_FILE: Final = "snapshot.json"
# The modules whose code decides what state a sequence of records produces.
_STATE_CODE: Final[tuple[ModuleType, ...]] = (state, schema, api, plan, limits)

_containers_decoder: Final = msgspec.json.Decoder(dict[str, ContainerState])


@final
class SnapshotHeader(msgspec.Struct, frozen=True, kw_only=True):
    """The first line: what the snapshot is and which record of the log it stands at."""

    format: int
    code: str  # `state_code_version()` of the server that wrote it
    position: LogPosition
    containers: int
    written_at: float


@final
class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The containers of a `ServerState` right after the record at `position`."""

    position: LogPosition
    containers: dict[str, ContainerState]

    def state(self) -> ServerState:
        restored = ServerState()
        restored.containers = dict(self.containers)
        restored.last_seq = self.position.seq
        return restored


class SnapshotError(ValueError):
    """Why a snapshot file cannot be used."""


@cache
def state_code_version() -> str:
    """A digest of the code that turns records into state (`evolve` and the types it builds).

    A snapshot written by different code may hold a state that this code would not build from
    the same records, so it is not used: the first start after such an upgrade replays the
    whole log and writes a new snapshot. Nobody has to remember to bump a version."""
    digest = hashlib.sha256(f"{SNAPSHOT_FORMAT} {schema.SCHEMA_VERSION}".encode())
    for module in _STATE_CODE:
        try:
            digest.update(inspect.getsource(module).encode())
        except (OSError, TypeError):  # no source installed: trust the release
            digest.update(f"{module.__name__} {__version__}".encode())
    return digest.hexdigest()[:16]


def capture(server_state: ServerState, position: LogPosition) -> Snapshot:
    """The state as of `position`, cheap enough for the trio thread: the containers dict is
    copied, the containers themselves are immutable (`evolve` replaces them), so the result can
    be encoded in another thread while the state moves on. `ValueError` if the state is not
    the one right after `position` (a record applied but not yet published, or a failed one)."""
    if server_state.last_seq != position.seq:
        raise ValueError(
            f"the state is at seq {server_state.last_seq}, the log position at {position.seq}"
        )
    return Snapshot(position=position, containers=dict(server_state.containers))


def _line(body: bytes) -> bytes:
    return b"%08x %s\n" % (zlib.crc32(body), body)


def encode_snapshot(snapshot: Snapshot, *, written_at: float) -> bytes:
    return b"".join(_pieces(snapshot, written_at))


def _pieces(snapshot: Snapshot, written_at: float) -> list[bytes]:
    """The file in pieces of one container each. The snapshot is written by a worker thread
    while the event loop goes on: one encode call or one copy of all 30 MiB would hold the
    GIL, and stall the loop, for all of it (up to 0.2 s, measured)."""
    header = SnapshotHeader(
        format=SNAPSHOT_FORMAT,
        code=state_code_version(),
        position=snapshot.position,
        containers=len(snapshot.containers),
        written_at=written_at,
    )
    encode = msgspec.json.encode
    body = [b"{"]
    for handle, container in snapshot.containers.items():
        body.append(
            b"%s%s:%s" % (b"," if len(body) > 1 else b"", encode(handle), encode(container))
        )
    body.append(b"}")
    crc = 0
    for piece in body:
        crc = zlib.crc32(piece, crc)
    return [_line(encode(header)), b"%08x " % crc, *body, b"\n"]


def decode_snapshot(data: bytes) -> Snapshot:
    """The snapshot in `data`; `SnapshotError` says why it cannot be used."""
    first = data.find(b"\n") + 1
    with memoryview(data) as view:  # slices of a view: the 30 MiB are never copied
        header_body, containers_body = _checked(view[:first]), _checked(view[first:])
        return _decode(header_body, containers_body)


def _decode(header_body: memoryview, containers_body: memoryview) -> Snapshot:
    try:
        header = msgspec.json.decode(header_body, type=SnapshotHeader)
    except msgspec.DecodeError as exc:
        raise SnapshotError(f"unreadable header: {exc}") from exc
    if header.format != SNAPSHOT_FORMAT:
        raise SnapshotError(f"format {header.format}, this server writes {SNAPSHOT_FORMAT}")
    if header.code != state_code_version():
        raise SnapshotError(
            f"written by other state code ({header.code}, this is {state_code_version()})"
        )
    try:
        with _gc_paused():
            containers = _containers_decoder.decode(containers_body)
    except msgspec.DecodeError as exc:
        raise SnapshotError(f"unreadable containers: {exc}") from exc
    if len(containers) != header.containers:
        raise SnapshotError(
            f"{len(containers)} containers where the header says {header.containers}"
        )
    return Snapshot(position=header.position, containers=containers)


def _checked(line: memoryview) -> memoryview:
    if len(line) < 11 or line[8] != ord(" ") or line[-1] != ord("\n"):
        raise SnapshotError("truncated or malformed")
    body = line[9:-1]
    try:
        good = int(bytes(line[:8]), 16) == zlib.crc32(body)
    except ValueError:
        good = False
    if not good:
        raise SnapshotError("checksum mismatch")
    return body


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Decoding creates ~10 objects per process of every container, all long-lived: without
    this, the collector scans the growing heap again and again (4x slower, measured)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_snapshot(path: Path, snapshot: Snapshot) -> int:
    """Replace the snapshot at `path` atomically and durably; the number of bytes written."""
    pieces = _pieces(snapshot, time.time())
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb", buffering=1 << 20) as file:
        for piece in pieces:
            file.write(piece)
        file.flush()
        os.fsync(fd)
    faults.reached("snapshot:before-rename")
    partial.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return sum(map(len, pieces))


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot at `path`; None if there is none; `SnapshotError` if it is unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotError(f"cannot read it: {exc}") from exc
    return decode_snapshot(data)


@final
class Restored:
    """An open event log and the state after its last record, and how it was rebuilt."""

    def __init__(self, event_log: EventLog, restored: ServerState, snapshot_seq: int) -> None:
        self.log = event_log
        self.state = restored
        self.snapshot_seq = snapshot_seq  # 0: the whole log was replayed
        self.replayed = restored.last_seq - snapshot_seq


def restore(log_path: Path, snapshot_path: Path) -> Restored:
    """Open the log and rebuild the state: from the snapshot and the records after it when
    the snapshot is usable, else from the whole log. Raises what `EventLog.open` raises."""
    snapshot = None
    try:
        snapshot = read_snapshot(snapshot_path)
    except SnapshotError as exc:
        log.warning("snapshot-ignored path=%s reason=%s", snapshot_path, exc)
    event_log: EventLog | None = None
    if snapshot is not None:
        try:
            event_log = EventLog.open(log_path, resume=snapshot.position)
        except PositionMismatchError as exc:
            log.warning("snapshot-ignored path=%s reason=the log differs: %s", snapshot_path, exc)
    if event_log is None or snapshot is None:
        snapshot = None
        event_log = EventLog.open(log_path)
    try:
        restored = snapshot.state() if snapshot is not None else ServerState()
        for record in event_log.records(since=restored.last_seq):
            evolve(restored, record)
    except BaseException:
        event_log.close()
        raise
    return Restored(event_log, restored, snapshot.position.seq if snapshot is not None else 0)
