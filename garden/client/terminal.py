"""A process's terminal over `GET /containers/:h/processes/:pid/ws` (API.md): binary frames
carry input and output, text frames carry `{"resize": ...}` and `{"signal": ...}` from the
client and `{"exit_status": n}` from the server.

`TerminalProtocol` is the I/O-free part (wsproto underneath); `Terminal` drives it over a
blocking socket for the sync client and the CLI, `aio_terminal.AsyncTerminal` over trio.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import final

import msgspec
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError

from garden.api import ErrorBody, ResizeRequest, SignalRequest, TtySize
from garden.client import http11
from garden.client.errors import from_body, from_response
from garden.client.target import Target
from garden.errors import GardenError, ServerUnreachableError, UnexpectedResponseError

_encoder = msgspec.json.Encoder()


class _ServerMessage(msgspec.Struct, frozen=True):
    exit_status: int | None = None
    error: ErrorBody | str | None = None


_message = msgspec.json.Decoder(_ServerMessage)


class TerminalOutput(msgspec.Struct, frozen=True):
    data: bytes


class TerminalExited(msgspec.Struct, frozen=True):
    exit_status: int


class TerminalNotice(msgspec.Struct, frozen=True):
    """An `{"error": ...}` text frame: a control message was refused, or (followed by a close)
    the terminal could not be opened. `error` is the exception it stands for."""

    error: GardenError


class TerminalClosed(msgspec.Struct, frozen=True):
    """The WebSocket closed (1006 when the connection dropped without a close frame)."""

    code: int
    reason: str = ""


TerminalEvent = TerminalOutput | TerminalExited | TerminalNotice | TerminalClosed


@final
class TerminalProtocol:
    """Bytes in, events out; every method that makes frames returns the bytes to send."""

    def __init__(self, host: str, path: str, headers: list[tuple[str, str]]) -> None:
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._host = host
        self._path = path
        self._headers = [(k.encode(), v.encode()) for k, v in headers]
        self._outgoing = bytearray()
        self._text: list[str] = []
        self._reject_status = 0
        self._reject_body = bytearray()
        self.accepted = False
        self.closed = False
        self.last_error: GardenError | None = None

    def open(self) -> bytes:
        return self._ws.send(
            Request(host=self._host, target=self._path, extra_headers=self._headers)
        )

    def receive(self, data: bytes | None) -> list[TerminalEvent]:
        """Feed bytes from the server (None at end of stream); the events they complete.
        A refused upgrade raises the error of its answer."""
        if self.closed:
            return []
        if data is None and not self.accepted:
            self.closed = True
            raise ServerUnreachableError("the connection closed before the WebSocket upgrade")
        try:
            self._ws.receive_data(data)
            return self._events(data)
        except ProtocolError as exc:
            raise UnexpectedResponseError(f"terminal: WebSocket protocol error: {exc}") from exc

    def _events(self, data: bytes | None) -> list[TerminalEvent]:
        events: list[TerminalEvent] = []
        for ev in self._ws.events():
            if isinstance(ev, AcceptConnection):
                self.accepted = True
            elif isinstance(ev, RejectConnection):
                self._reject_status = ev.status_code
                if not ev.has_body:
                    raise from_response(ev.status_code, b"")
            elif isinstance(ev, RejectData):
                self._reject_body += ev.data
                if ev.body_finished:
                    raise from_response(self._reject_status, bytes(self._reject_body))
            elif isinstance(ev, BytesMessage):
                events.append(TerminalOutput(bytes(ev.data)))
            elif isinstance(ev, TextMessage):
                self._text.append(ev.data)
                if ev.message_finished:
                    if (decoded := self._decode_text("".join(self._text))) is not None:
                        events.append(decoded)
                    self._text.clear()
            elif isinstance(ev, Ping):
                self._outgoing += self._ws.send(ev.response())
            elif isinstance(ev, CloseConnection):
                if data is not None and self._ws.state.name == "REMOTE_CLOSING":
                    self._outgoing += self._ws.send(ev.response())
                self.closed = True
                events.append(TerminalClosed(ev.code, ev.reason or ""))
        if data is None and not self.closed:
            self.closed = True
            events.append(TerminalClosed(1006, "connection lost"))
        return events

    def _decode_text(self, text: str) -> TerminalEvent | None:
        try:
            message = _message.decode(text)
        except msgspec.DecodeError:
            raise UnexpectedResponseError(f"unexpected terminal message: {text[:200]}") from None
        if message.exit_status is not None:
            return TerminalExited(message.exit_status)
        if isinstance(message.error, ErrorBody):
            error = from_body(message.error)
        elif message.error is not None:
            error = UnexpectedResponseError(str(message.error))
        else:
            return None  # a message of a newer server: nothing this client knows to do
        self.last_error = error
        return TerminalNotice(error)

    def check_open(self) -> None:
        """During the handshake: a connection closed before the upgrade is an error (one
        closed right after it, e.g. a process that already exited, is not)."""
        if self.closed and not self.accepted:
            raise UnexpectedResponseError("the server closed the connection before the upgrade")

    def take_outgoing(self) -> bytes:
        """Frames the protocol owes the server (pongs, the close reply)."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    # Frames for a terminal that has closed are dropped: the process is gone.

    def input(self, data: bytes) -> bytes:
        if self.closed:
            return b""
        return self._ws.send(BytesMessage(data=data))

    def resize(self, columns: int, rows: int) -> bytes:
        if self.closed:
            return b""
        msg = ResizeRequest(resize=TtySize(columns=columns, rows=rows))
        return self._ws.send(TextMessage(data=_encoder.encode(msg).decode()))

    def signal(self, signal: str | int) -> bytes:
        if self.closed:
            return b""
        return self._ws.send(
            TextMessage(data=_encoder.encode(SignalRequest(signal=signal)).decode())
        )

    def close(self) -> bytes:
        if self.closed or not self.accepted:
            return b""
        self.closed = True
        return self._ws.send(CloseConnection(code=1000))


@final
class Terminal:
    """A process's terminal over a blocking socket. `fileno()` lets a caller `select` on it
    beside its own input; `receive()` reads once and returns the events that completed."""

    def __init__(
        self, target: Target, path: str, headers: list[tuple[str, str]], timeout: float | None
    ) -> None:
        self._sock = http11.connect(target, timeout)
        self._proto = TerminalProtocol(target.host_header, target.prefix + path, headers)
        self._early: list[TerminalEvent] = []
        try:
            self._sock.sendall(self._proto.open())
            while not self._proto.accepted:
                self._early += self._read()
                self._proto.check_open()
        except BaseException:
            self._sock.close()
            raise
        self._sock.settimeout(None)

    def _read(self) -> list[TerminalEvent]:
        try:
            data = self._sock.recv(256 * 1024)
        except OSError:
            data = b""
        events = self._proto.receive(data or None)
        self._flush()
        return events

    def _flush(self) -> None:
        if out := self._proto.take_outgoing():
            self._send(out)

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            if not self._proto.closed:
                raise ServerUnreachableError(f"terminal connection broke: {exc}") from exc

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def last_error(self) -> GardenError | None:
        """The error of the last `{"error": ...}` frame (e.g. why the server closed)."""
        return self._proto.last_error

    @property
    def closed(self) -> bool:
        return self._proto.closed

    @property
    def pending(self) -> bool:
        """Events already read (with the handshake) that `receive()` returns without waiting."""
        return bool(self._early)

    def receive(self) -> list[TerminalEvent]:
        """Block until some bytes arrive; the events they complete (maybe none)."""
        if self._early:
            events, self._early = self._early, []
            return events
        if self._proto.closed:
            return []
        return self._read()

    def __iter__(self) -> Iterator[TerminalEvent]:
        while not self._proto.closed or self._early:
            yield from self.receive()

    def send(self, data: bytes) -> None:
        if out := self._proto.input(data) if data else b"":
            self._send(out)

    def resize(self, columns: int, rows: int) -> None:
        if out := self._proto.resize(columns, rows):
            self._send(out)

    def signal(self, signal: str | int) -> None:
        if out := self._proto.signal(signal):
            self._send(out)

    def close(self) -> None:
        try:
            if out := self._proto.close():
                self._send(out)
        finally:
            self._sock.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
