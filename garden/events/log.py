"""The event log file: line format, checksums, torn-tail recovery, durable appends, repair.

One record per line: `<crc32 of the JSON as 8 lowercase hex> <JSON of Record>\\n`. The file is
append-only; `append` writes a whole batch with one write() and one fsync. On `open` the file
is scanned: a damaged tail (an unterminated last line, or bad lines with no valid record after
them) is what a crash during a write leaves and is cut off and reported in `EventLog.torn`;
damage followed by a valid record, or a sequence gap or repeat, raises `LogCorruptError` and
the server refuses to start. `repair` is the explicit operator action that copies the valid
prefix aside. The methods here block on disk I/O: from trio, call them in a worker thread.

`open(resume=position)` starts the scan at a `LogPosition` a snapshot recorded instead of at
byte 0, after checking that the file still holds that record there: start-up then costs the
tail, not the history. The part before it is checked (and indexed for `records(since)`) only
when something reads it, or by `verify()`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final, final

import msgspec

from garden.errors import LogCorruptError
from garden.events.schema import SCHEMA_VERSION, AnyEvent, Origin, Record

# Every INDEX_EVERY-th record's byte offset is kept so `records(since)` can seek.
INDEX_EVERY: Final = 4096

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Record)
_event_decoder: Final = msgspec.json.Decoder(AnyEvent)
_raw_decoder: Final = msgspec.json.Decoder(dict[str, object])
_SEQ_PREFIX: Final = b'{"seq":'  # the encoder writes Record's fields in declaration order


class _SeqOnly(msgspec.Struct):
    seq: int


_seq_decoder: Final = msgspec.json.Decoder(_SeqOnly)


def upcast(raw: dict[str, object]) -> dict[str, object]:
    """Bring a record written under an older schema version to the current shape.

    Called only for records whose `v` differs from `SCHEMA_VERSION`, with the record decoded
    to plain JSON values; current records take the typed fast path and never come here.
    Identity while `SCHEMA_VERSION == 1` (no older version exists). When a change in meaning
    bumps the version, add one step per version, each ending with `raw["v"] = <next>`:

        if raw["v"] == 1:
            ...rewrite raw["event"] to the v2 shape...
            raw["v"] = 2
    """
    return raw


def decode_record(body: bytes) -> Record:
    """Decode one record's JSON, upcasting older versions; `ValueError` says what is wrong."""
    try:
        record = _decoder.decode(body)
    except msgspec.ValidationError:
        pass  # maybe an older shape: the slow path below decides
    except msgspec.DecodeError as exc:
        raise ValueError(f"undecodable JSON: {exc}") from exc
    else:
        if record.v == SCHEMA_VERSION:
            return record
    return _decode_other_version(body)


def _decode_other_version(body: bytes) -> Record:
    raw = _raw_decoder.decode(body)
    written = raw.get("v")
    if not isinstance(written, int) or written > SCHEMA_VERSION:
        raise ValueError(f"schema version {written!r} is not one this server can read")
    raw = upcast(raw)
    if raw.get("v") != SCHEMA_VERSION:
        raise ValueError(f"no upcaster from schema version {written}")
    try:
        return msgspec.convert(raw, Record)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid record: {exc}") from exc


def encode_record(record: Record) -> bytes:
    """The JSON of `record`; `ValueError` if it would not decode back to an equal record
    (NaN or infinite floats, ints out of range, lone surrogates...)."""
    try:
        body = _encoder.encode(record)
        back = _decoder.decode(body)
    except (msgspec.EncodeError, msgspec.DecodeError) as exc:
        raise ValueError(f"record {record.seq} cannot be logged: {exc}") from exc
    if back != record and msgspec.to_builtins(back) != msgspec.to_builtins(record):
        raise ValueError(f"record {record.seq} does not survive a JSON round trip: {record!r}")
    return body


def check_events(events: Iterable[AnyEvent]) -> None:
    """`ValueError` unless every event survives the log's JSON round trip unchanged."""
    for event in events:
        try:
            back = _event_decoder.decode(_encoder.encode(event))
        except (msgspec.EncodeError, msgspec.DecodeError) as exc:
            raise ValueError(f"event cannot be logged: {exc}: {event!r}") from exc
        if back != event and msgspec.to_builtins(back) != msgspec.to_builtins(event):
            raise ValueError(f"event does not survive a JSON round trip: {event!r}")


def _line_body(line: bytes) -> bytes | str:
    """The JSON of a complete line whose checksum matches, else the reason it is bad."""
    if len(line) < 11 or line[8:9] != b" " or line[-1:] != b"\n":
        return "malformed line" if line[-1:] == b"\n" else "unterminated last line"
    body = line[9:-1]
    try:
        good = int(line[:8], 16) == zlib.crc32(body)
    except ValueError:
        return "malformed checksum"
    return body if good else "checksum mismatch"


def _seq_of(body: bytes) -> int:
    """The seq of a checksummed record: read from the fixed prefix, else by decoding."""
    if body.startswith(_SEQ_PREFIX):
        comma = body.find(b",", 7)
        if comma > 7:
            try:
                return int(body[7:comma])
            except ValueError:
                pass  # fall back to the decoder
    return _seq_decoder.decode(body).seq


@final
class LogPosition(msgspec.Struct, frozen=True, kw_only=True):
    """The end of record `seq` in the file: the next record starts at byte `offset`, and the
    line of record `seq` is `length` bytes with checksum `crc`, so a reader can check cheaply
    that a file still holds it. `LogPosition()` is the start of an empty log."""

    seq: int = 0
    offset: int = 0
    crc: int = 0
    length: int = 0


START: Final = LogPosition()


class PositionMismatchError(ValueError):
    """The log does not hold, at the given position, the record a `LogPosition` describes."""


@final
class TornTail(msgspec.Struct, frozen=True, kw_only=True):
    """What `EventLog.open` cut off the end of the file: a write interrupted by a crash."""

    offset: int
    dropped_bytes: int
    reason: str


@final
class EventLog:
    """An open, locked, append-only log file. Use `EventLog.open(path)`."""

    def __init__(
        self,
        path: Path,
        fd: int,
        position: LogPosition,
        index: list[int],
        torn: TornTail | None,
        *,
        floor: LogPosition = START,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self.torn = torn
        self.fsyncs = 0
        self.bytes_written = 0
        self._fd = fd
        # Assigned as one object, so a reader in another thread never sees a torn pair.
        self._position = position
        # The scan started at `floor`: the history up to it is unchecked and unindexed.
        # `_index[i]` is the offset of seq (_index_base + i) * INDEX_EVERY + 1.
        self._floor = floor
        self._index_base = -(-floor.seq // INDEX_EVERY)
        self._index = index
        self._prefix_index: list[int] | None = [] if floor.seq == 0 else None
        self._prefix_lock = threading.Lock()
        self._broken = ""

    @classmethod
    def open(
        cls, path: Path, *, readonly: bool = False, resume: LogPosition | None = None
    ) -> EventLog:
        """Create (fsyncing the directory) or scan the log at `path`, cut a torn tail, and
        lock it against a second writer. Raises `LogCorruptError` on damage before the tail
        or a sequence break, `OSError` if another `EventLog` holds the lock.

        `resume` scans only from that position on, after checking that the file holds the
        record it describes (`PositionMismatchError` if not; nothing is cut then).

        `readonly=True` is for reading a log a running server may be writing (`garden
        events`, tests): no lock, no create, and a torn tail is reported but not cut."""
        floor = resume or START
        if readonly:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _check_position(fd, path, floor)
                return cls(path, fd, *_scan(path, floor), floor=floor, readonly=True)
            except BaseException:
                os.close(fd)
                raise
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(path, flags)
            created = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                why = "event log is open for writing elsewhere (another server?)"
                raise OSError(errno.EAGAIN, why, str(path)) from exc
            if created:
                _fsync_dir(path.parent)
            _check_position(fd, path, floor)
            if created:
                return cls(path, fd, START, [], None)
            position, index, torn = _scan(path, floor)
            if torn is not None:
                os.ftruncate(fd, torn.offset)
                os.fsync(fd)
            return cls(path, fd, position, index, torn, floor=floor)
        except BaseException:
            os.close(fd)
            raise

    @property
    def last_seq(self) -> int:
        """The seq of the last durable record; 0 for an empty log."""
        return self._position.seq

    @property
    def size_bytes(self) -> int:
        return self._position.offset

    @property
    def position(self) -> LogPosition:
        """Where the last durable record ends (what a snapshot of the state after it keeps)."""
        return self._position

    @property
    def resumed_at(self) -> LogPosition:
        """The position `open` started its scan at: `LogPosition()` unless it resumed."""
        return self._floor

    def verify(self) -> None:
        """Check the checksum and seq of every record before the position `open` resumed at
        (it checked those after); `LogCorruptError` on damage. A no-op after a full open."""
        self._prefix()

    def records(self, since: int = 0) -> Iterator[Record]:
        """Stream the records with seq > `since` from disk, checking each; stops at the end
        of what was durable when called. Raises `LogCorruptError` on damage."""
        position = self._position
        end, last_seq = position.offset, position.seq
        if since >= last_seq:
            return
        block = max(since, 0) // INDEX_EVERY
        if block >= self._index_base:
            offset = self._index[block - self._index_base]
            expected = block * INDEX_EVERY + 1
        elif since >= self._floor.seq:
            offset, expected = self._floor.offset, self._floor.seq + 1
        else:
            offset = self._prefix()[block]
            expected = block * INDEX_EVERY + 1
        decode = _decoder.decode
        crc32 = zlib.crc32
        with open(self.path, "rb") as file:
            file.seek(offset)
            for line in file:
                if offset >= end:
                    return
                body = line[9:-1]
                try:
                    good = int(line[:8], 16) == crc32(body) and line[-1:] == b"\n"
                except ValueError:
                    good = False
                if not good or line[8:9] != b" ":
                    raise LogCorruptError(str(self.path), offset, f"damaged line: {line[:60]!r}")
                try:
                    record = decode(body)
                except msgspec.DecodeError:
                    record = self._slow_decode(body, offset)
                if record.v != SCHEMA_VERSION:
                    record = self._slow_decode(body, offset)
                if record.seq != expected:
                    raise LogCorruptError(
                        str(self.path), offset, f"seq {record.seq} where {expected} was expected"
                    )
                expected += 1
                offset += len(line)
                if record.seq > since:
                    yield record
        if expected <= last_seq:
            raise LogCorruptError(str(self.path), offset, "file shorter than scanned")

    def _prefix(self) -> list[int]:
        """The seek index of the history before the resume point, checking it on first use
        (once, whichever thread asks first)."""
        with self._prefix_lock:
            if self._prefix_index is None:
                floor = self._floor
                position, index, torn = _scan(self.path, START, stop=floor.offset)
                if torn is not None:
                    raise LogCorruptError(str(self.path), torn.offset, torn.reason)
                if position != floor:
                    raise LogCorruptError(
                        str(self.path),
                        position.offset,
                        f"history ends at seq {position.seq} where {floor.seq} was expected",
                    )
                self._prefix_index = index
            return self._prefix_index

    def _slow_decode(self, body: bytes, offset: int) -> Record:
        try:
            return decode_record(body)
        except ValueError as exc:
            raise LogCorruptError(str(self.path), offset, str(exc)) from exc

    def append(self, batch: Sequence[tuple[AnyEvent, Origin]], now: float) -> list[Record]:
        """Write `batch` as records last_seq+1.. with one write() and one fsync; return them.

        On `OSError` the file is cut back to its last good length and nothing is recorded
        (if even that fails, the log refuses further appends). `ValueError` if a record
        cannot be represented; nothing is written then."""
        if self._broken:
            raise OSError(errno.EIO, f"event log unusable since a failed rewind: {self._broken}")
        if self._fd < 0 or self.readonly:
            raise OSError(errno.EBADF, "event log is closed or read-only")
        records: list[Record] = []
        offsets: list[int] = []
        buf = bytearray()
        start = self._position
        seq = start.seq
        crc = 0
        for event, origin in batch:
            seq += 1
            record = Record(seq=seq, time=now, v=SCHEMA_VERSION, origin=origin, event=event)
            body = encode_record(record)
            offsets.append(start.offset + len(buf))
            crc = zlib.crc32(body)
            buf += b"%08x " % crc
            buf += body
            buf += b"\n"
            records.append(record)
        if not records:
            return records
        try:
            _write_all(self._fd, buf)
            os.fsync(self._fd)
        except OSError:
            self._rewind()
            raise
        self.fsyncs += 1
        self.bytes_written += len(buf)
        for record, offset in zip(records, offsets, strict=True):
            if (record.seq - 1) % INDEX_EVERY == 0:
                self._index.append(offset)
        end = start.offset + len(buf)
        self._position = LogPosition(seq=seq, offset=end, crc=crc, length=end - offsets[-1])
        return records

    def _rewind(self) -> None:
        """Cut a failed write back off. After a failed fsync the kernel may have dropped the
        dirty pages, so the only safe state is the last good length, made durable again."""
        try:
            os.ftruncate(self._fd, self._position.offset)
            os.fsync(self._fd)
        except OSError as exc:
            self._broken = str(exc)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _write_all(fd: int, data: bytearray) -> None:
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_position(fd: int, path: Path, position: LogPosition) -> None:
    """`PositionMismatchError` unless the file holds, ending at `position.offset`, a whole
    line with `position`'s checksum, length and seq. Costs one small read. (A slice that
    starts mid-line cannot pass: JSON escapes every quote a record's strings contain, so no
    record holds `<crc> {"seq":` inside it.)"""
    if position.seq == 0:
        if position != START:
            raise PositionMismatchError(f"{position} is not the start of a log")
        return
    begin = position.offset - position.length
    if begin < 0 or position.length < 11:
        raise PositionMismatchError(f"{position} cannot be a record's line")
    line = os.pread(fd, position.length, begin)
    if len(line) != position.length:
        raise PositionMismatchError(f"{path} ends before byte {position.offset}")
    body = _line_body(line)
    if isinstance(body, str):
        raise PositionMismatchError(f"the line before byte {position.offset}: {body}")
    try:
        seq = _seq_of(body)
    except msgspec.DecodeError as exc:
        raise PositionMismatchError(f"the line before byte {position.offset}: {exc}") from exc
    if zlib.crc32(body) != position.crc or seq != position.seq:
        raise PositionMismatchError(
            f"the line before byte {position.offset} is seq {seq} with checksum "
            f"{zlib.crc32(body):08x}, not seq {position.seq} with {position.crc:08x}"
        )


def _scan(
    path: Path, start: LogPosition, stop: int | None = None
) -> tuple[LogPosition, list[int], TornTail | None]:
    """Check every line's checksum and seq from `start` (to `stop`, else to the end): the
    position of the last good record, the seek index of the records after `start`, and the
    torn tail."""
    offset, last_seq = start.offset, start.seq
    last_crc, last_len = start.crc, start.length
    index: list[int] = []
    bad: tuple[int, str] | None = None  # first damaged line, if nothing valid follows it
    crc32 = zlib.crc32
    with open(path, "rb") as file:
        file.seek(offset)
        for line in file:
            if stop is not None and offset >= stop:
                break
            body = line[9:-1]
            try:
                crc = int(line[:8], 16)
                good = crc == crc32(body) and line[-1:] == b"\n"
            except ValueError:
                good = False
            if not good or line[8:9] != b" ":
                bad = bad or (offset, str(_line_body(line)))
                offset += len(line)
                continue
            if bad is not None:
                raise LogCorruptError(str(path), bad[0], f"{bad[1]}, valid records follow")
            try:
                seq = _seq_of(body)
            except msgspec.DecodeError as exc:
                raise LogCorruptError(str(path), offset, f"no seq: {exc}") from exc
            if seq != last_seq + 1:
                raise LogCorruptError(
                    str(path), offset, f"seq {seq} where {last_seq + 1} was expected"
                )
            if (seq - 1) % INDEX_EVERY == 0:
                index.append(offset)
            last_seq, last_crc, last_len = seq, crc, len(line)
            offset += len(line)
    good_end = offset if bad is None else bad[0]
    position = LogPosition(seq=last_seq, offset=good_end, crc=last_crc, length=last_len)
    if bad is None:
        return position, index, None
    torn = TornTail(offset=bad[0], dropped_bytes=offset - bad[0], reason=bad[1])
    return position, index, torn


@final
class RepairReport(msgspec.Struct, frozen=True, kw_only=True):
    """What `repair` kept and dropped. `dropped_valid` counts checksummed records after the
    damage: history that is really lost, not just a torn write."""

    source: str
    repaired: str
    kept_records: int
    last_seq: int
    kept_bytes: int
    dropped_bytes: int
    dropped_valid: int
    damage_offset: int | None
    reason: str


def repair(path: Path) -> RepairReport:
    """Copy the valid prefix of the log at `path` to `<path>.repaired` (fsynced, replacing an
    older one) and report what was left out. The damaged original is never modified: the
    operator inspects the report and moves the repaired file into place."""
    target = path.with_name(path.name + ".repaired")
    partial = path.with_name(path.name + ".repaired.tmp")
    kept = kept_bytes = offset = dropped_valid = 0
    damage: tuple[int, str] | None = None
    with open(path, "rb") as src, open(partial, "wb") as dst:
        for line in src:
            body = _line_body(line)
            if damage is None:
                why = body if isinstance(body, str) else _check_record(body, kept + 1)
                if why:
                    damage = (offset, why)
                else:
                    dst.write(line)
                    kept += 1
                    kept_bytes += len(line)
            elif not isinstance(body, str):
                dropped_valid += 1
            offset += len(line)
        dst.flush()
        os.fsync(dst.fileno())
    partial.replace(target)
    _fsync_dir(target.parent)
    return RepairReport(
        source=str(path),
        repaired=str(target),
        kept_records=kept,
        last_seq=kept,
        kept_bytes=kept_bytes,
        dropped_bytes=offset - kept_bytes,
        dropped_valid=dropped_valid,
        damage_offset=damage[0] if damage else None,
        reason=damage[1] if damage else "",
    )


def _check_record(body: bytes, expected_seq: int) -> str:
    try:
        record = decode_record(body)
    except ValueError as exc:
        return str(exc)
    if record.seq != expected_seq:
        return f"seq {record.seq} where {expected_seq} was expected"
    return ""
