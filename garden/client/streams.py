"""What the sync and async process streams share: decoding the NDJSON lines of run and attach
(the process id first, then output, the exit status last) and collecting output as bytes."""

from __future__ import annotations

import binascii
from collections.abc import Callable
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


Line = bytes | bytearray | memoryview

_DATA_KEY = b'"data":"'
_HEAD_MAX = 512  # the key is within this many bytes of the start of the lines the server sends
_LINE_END = b'"}'


def base64_output(line: Line) -> Output | None:
    """The output a base64 line carries, for a line of the form the server sends
    (`{"process_id":…,"source":…,"data":"<base64>"}`), decoded without making a `str` of its
    data nor parsing it as JSON: the base64 is decoded straight from the line, checked (only
    base64 characters, so no quote or escape: the data string runs to the line's `"}`), and
    the JSON before it parsed alone. None for any other line (no data, another layout): decode
    that with `decode_line`. For large output this is most of the client's work (measured in
    docs/performance.md: ~8x less CPU than `str` + a2b_base64)."""
    view = memoryview(line)  # slices of it are not copies
    key = bytes(view[:_HEAD_MAX]).find(_DATA_KEY)
    if key < 0 or view[-2:] != _LINE_END:
        return None
    try:
        head = _payload.decode(bytes(view[:key]) + b'"data":""}')
        data = _b64decode(view[key + len(_DATA_KEY) : -2])
    except (ValueError, msgspec.DecodeError):  # binascii.Error is a ValueError
        return None
    if head.source is None or head.exit_status is not None:
        return None
    return Output(head.source, data)


def _b64decode(data: Line | str) -> bytes:
    """Strict base64 (no characters outside the alphabet), SIMD-fast with pybase64."""
    global _b64decode_impl
    if _b64decode_impl is None:
        try:
            from pybase64 import b64decode as impl
        except ImportError:  # pragma: no cover - pybase64 is a dependency; binascii is slower
            return binascii.a2b_base64(data, strict_mode=True)
        _b64decode_impl = impl
    return _b64decode_impl(data, validate=True)


_b64decode_impl: Callable[..., bytes] | None = None


def payload_bytes(payload: ProcessPayload, base64: bool) -> bytes:
    """The exact bytes of an output payload (`data` is base64 when the stream was opened with
    `base64=True`, UTF-8 text otherwise)."""
    data = payload.data or ""
    if not base64:
        return data.encode()
    try:
        return _b64decode(data)
    except ValueError:
        pass  # not strict base64 (line breaks, say): the lenient decoder below
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

    def on_output_line(self, line: bytes) -> ProcessPayload | Output | None:
        """`on_line`, except that a base64 output line comes as its `Output`, decoded without
        the JSON decoder (`base64_output`): what `outputs()` and `result()` read."""
        if self.base64 and self.process_id and (out := base64_output(line)) is not None:
            return out
        return self.on_line(line)

    def output(self, payload: ProcessPayload | Output) -> Output:
        if isinstance(payload, Output):
            return payload
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
