"""What the sync and async process streams share: decoding the NDJSON lines of run and attach
(the process id first, then output, the exit status last) and collecting output as bytes."""

from __future__ import annotations

import binascii
from typing import Literal, final

import msgspec

from garden.api import ErrorBody, ProcessPayload
from garden.client.errors import from_body
from garden.errors import UnexpectedResponseError

_payload = msgspec.json.Decoder(ProcessPayload)
_error = msgspec.json.Decoder(ErrorBody)


class Output(msgspec.Struct, frozen=True):
    """A chunk of a process's output as the exact bytes it wrote."""

    source: Literal["stdout", "stderr"]
    data: bytes


class ProcessResult(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a finished process wrote, and how it ended."""

    process_id: str
    exit_status: int
    stdout: bytes
    stderr: bytes


def decode_line(line: bytes) -> ProcessPayload:
    """One NDJSON line; an error object in the stream is raised as its exception."""
    try:
        return _payload.decode(line)
    except msgspec.DecodeError:
        pass
    try:
        body = _error.decode(line)
    except msgspec.DecodeError:
        raise UnexpectedResponseError(f"not a process stream line: {line[:200]!r}") from None
    raise from_body(body)


def payload_bytes(payload: ProcessPayload, base64: bool) -> bytes:
    """The exact bytes of an output payload (`data` is base64 when the stream was opened with
    `base64=True`, UTF-8 text otherwise)."""
    data = payload.data or ""
    if not base64:
        return data.encode()
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        raise UnexpectedResponseError("process output is not valid base64") from None


@final
class StreamState:
    """Follows one process stream line by line."""

    def __init__(self, handle: str, base64: bool) -> None:
        self.handle = handle
        self.base64 = base64
        self.process_id = ""
        self.exit_status: int | None = None

    def on_line(self, line: bytes) -> ProcessPayload | None:
        """The output payload this line carries, or None (the id, the exit status, a blank)."""
        if not line.strip():
            return None
        p = decode_line(line)
        if not self.process_id:
            self.process_id = p.process_id
        if p.exit_status is not None:
            self.exit_status = p.exit_status
            return None
        if p.source is None:
            return None
        return p

    def output(self, payload: ProcessPayload) -> Output:
        assert payload.source is not None
        return Output(payload.source, payload_bytes(payload, self.base64))

    def check_named(self) -> None:
        """After the first lines: a stream that ended before naming its process is an error."""
        if not self.process_id:
            raise UnexpectedResponseError(
                "the process stream ended before naming the process", handle=self.handle
            )

    def check_ended(self) -> int:
        """The exit status, once the stream has ended; a stream cut short is an error."""
        if self.exit_status is None:
            raise UnexpectedResponseError(
                f"the stream of process {self.process_id or '?'} ended without an exit status",
                handle=self.handle,
            )
        return self.exit_status


class Collected:
    """stdout and stderr gathered from outputs."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()

    def add(self, out: Output) -> None:
        (self.stdout if out.source == "stdout" else self.stderr).extend(out.data)

    def result(self, process_id: str, exit_status: int) -> ProcessResult:
        return ProcessResult(
            process_id=process_id,
            exit_status=exit_status,
            stdout=bytes(self.stdout),
            stderr=bytes(self.stderr),
        )
