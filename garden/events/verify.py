"""`garden events verify`: an offline audit of a state dir's event log and snapshot.

Unlike `EventLog.open`, which stops at the first damage, it reads every line and reports every
finding with its byte offset: a line that is not `<crc32> <JSON>` or whose JSON does not decode
(`corrupt-line`), a checksum that does not match (`checksum-mismatch`), damage at the end with
no valid record after it (`torn-tail`: the server cuts it at its next start), a sequence number
other than the previous one plus one (`seq-gap`, `seq-repeat`), and a record about a handle
the replay does not know (`unknown-handle`, a warning). Every valid record is replayed through
`evolve`; a snapshot is then checked against that replay: it must be readable
(`snapshot-unreadable`), the log must hold the record it stands at, at the offset and with the
checksum it names (`snapshot-position`), and its containers must equal the replay's right
after that record (`snapshot-state`). A snapshot of other state code is only noted: the server
ignores it. Reads only; safe while a server runs (it may see that server's last line torn).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Final, Literal, final

import msgspec

from garden.events.log import _line_body, decode_record
from garden.events.schema import ContainerCreateStarted
from garden.events.snapshot import (
    SNAPSHOT_FILE,
    Snapshot,
    SnapshotError,
    SnapshotHeader,
    read_snapshot,
    state_code_version,
)
from garden.events.state import ContainerState, ServerState, evolve

Kind = Literal[
    "corrupt-line",
    "checksum-mismatch",
    "torn-tail",
    "seq-gap",
    "seq-repeat",
    "unknown-handle",
    "snapshot-unreadable",
    "snapshot-position",
    "snapshot-state",
    "snapshot-other-code",
]
WARNINGS: Final = frozenset({"unknown-handle", "snapshot-other-code"})
MAX_FINDINGS: Final = 1000  # a log damaged everywhere is reported in part


@final
class Finding(msgspec.Struct, frozen=True, kw_only=True):
    kind: Kind
    detail: str
    offset: int | None = None  # byte offset in events.log of the line concerned
    seq: int | None = None

    @property
    def is_error(self) -> bool:
        return self.kind not in WARNINGS


@final
class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    log: str
    records: int  # valid records read
    last_seq: int
    bytes: int
    containers: int  # in the state the replay ends with
    snapshot_seq: int | None  # None: no (readable) snapshot
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not any(f.is_error for f in self.findings)


@final
class _Verifier:
    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot
        self.state = ServerState()
        self.findings: list[Finding] = []
        self.pending: list[Finding] = []  # damage not (yet) followed by a valid record
        self.expected = 1
        self.records = 0
        self.offset = 0
        self.at_snapshot: dict[str, ContainerState] | None = None

    def add(self, finding: Finding) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)

    def line(self, line: bytes) -> None:
        offset = self.offset
        self.offset += len(line)
        body = _line_body(line)
        if isinstance(body, str):
            kind: Kind = "checksum-mismatch" if body == "checksum mismatch" else "corrupt-line"
            self.pending.append(Finding(kind=kind, offset=offset, detail=body))
            return
        for finding in self.pending:
            self.add(finding)
        self.pending.clear()
        try:
            record = decode_record(body)
        except ValueError as exc:
            self.add(Finding(kind="corrupt-line", offset=offset, detail=f"checksum ok: {exc}"))
            return
        if record.seq != self.expected:
            kind = "seq-gap" if record.seq > self.expected else "seq-repeat"
            detail = f"seq {record.seq} where {self.expected} was expected"
            self.add(Finding(kind=kind, offset=offset, seq=record.seq, detail=detail))
        self.expected = record.seq + 1
        handle = getattr(record.event, "handle", None)
        known = handle in self.state.containers or isinstance(record.event, ContainerCreateStarted)
        if handle is not None and not known:
            detail = f"{type(record.event).__name__} about {handle!r}, which the log does not hold"
            self.add(Finding(kind="unknown-handle", offset=offset, seq=record.seq, detail=detail))
        evolve(self.state, record)
        self.records += 1
        snapshot = self.snapshot
        if snapshot is not None and record.seq == snapshot.position.seq:
            self._check_position(snapshot, offset, line, body)
            self.at_snapshot = dict(self.state.containers)

    def _check_position(self, snapshot: Snapshot, offset: int, line: bytes, body: bytes) -> None:
        p = snapshot.position
        held = (self.offset, zlib.crc32(body), len(line))
        if held != (p.offset, p.crc, p.length) and self.at_snapshot is None:
            self.add(
                Finding(
                    kind="snapshot-position",
                    offset=offset,
                    seq=p.seq,
                    detail=f"the snapshot stands at seq {p.seq} ending at byte {p.offset} with "
                    f"checksum {p.crc:08x}; the log's seq {p.seq} ends at byte {held[0]} with "
                    f"checksum {held[1]:08x}",
                )
            )

    def finish(self) -> None:
        if self.pending:
            first = self.pending[0]
            dropped = self.offset - (first.offset or 0)
            detail = (
                f"{first.detail}, {dropped} bytes at the end: the server cuts them at its start"
            )
            self.add(Finding(kind="torn-tail", offset=first.offset, detail=detail))
        snapshot = self.snapshot
        if snapshot is None:
            return
        seq = snapshot.position.seq
        if self.at_snapshot is None:
            detail = f"the snapshot stands at seq {seq}, which the log does not hold"
            self.add(Finding(kind="snapshot-position", seq=seq, detail=detail))
            return
        if snapshot.containers != self.at_snapshot:
            differ = sorted(
                h
                for h in snapshot.containers.keys() | self.at_snapshot.keys()
                if snapshot.containers.get(h) != self.at_snapshot.get(h)
            )
            shown = ", ".join(differ[:10]) + (" ..." if len(differ) > 10 else "")
            detail = (
                f"the snapshot at seq {seq} differs from the replay of the log for "
                f"{len(differ)} containers: {shown}"
            )
            self.add(Finding(kind="snapshot-state", seq=seq, detail=detail))


def verify(state_dir: Path) -> VerifyReport:
    """Audit `<state_dir>/events.log` and `<state_dir>/snapshot.json`; `OSError` if the log
    cannot be read."""
    log_path = state_dir / "events.log"
    snapshot: Snapshot | None = None
    early: list[Finding] = []
    try:
        snapshot = read_snapshot(state_dir / SNAPSHOT_FILE)
    except SnapshotError as exc:
        code = snapshot_code(state_dir)
        if code and code != state_code_version():
            detail = f"{exc}: the server ignores it, and it is not compared"
            early.append(Finding(kind="snapshot-other-code", detail=detail))
        else:
            early.append(Finding(kind="snapshot-unreadable", detail=str(exc)))
    v = _Verifier(snapshot)
    with open(log_path, "rb") as file:
        for line in file:
            v.line(line)
    v.finish()
    return VerifyReport(
        log=str(log_path),
        records=v.records,
        last_seq=v.expected - 1,
        bytes=v.offset,
        containers=len(v.state.containers),
        snapshot_seq=snapshot.position.seq if snapshot is not None else None,
        findings=early + v.findings,
    )


def snapshot_code(state_dir: Path) -> str:
    """The code version in the snapshot's header ("" if there is none to read)."""
    try:
        with open(state_dir / SNAPSHOT_FILE, "rb") as f:
            header = f.readline()
        return msgspec.json.decode(header[9:-1], type=SnapshotHeader).code
    except (OSError, msgspec.DecodeError):
        return ""
