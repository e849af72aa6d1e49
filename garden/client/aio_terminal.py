"""`AsyncTerminal`: a process's terminal WebSocket over trio (the protocol is
`garden.client.terminal.TerminalProtocol`, shared with the blocking `Terminal`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import final

import trio

from garden.client.target import Target
from garden.client.terminal import TerminalEvent, TerminalProtocol
from garden.errors import GardenError, ServerUnreachableError


@final
class AsyncTerminal:
    """A process's terminal over trio: `send`, `resize`, `signal`, and `async for` events."""

    def __init__(self, stream: trio.abc.Stream, proto: TerminalProtocol) -> None:
        self._stream = stream
        self._proto = proto
        self._early: list[TerminalEvent] = []
        self._send_lock = trio.Lock()

    @classmethod
    async def open(
        cls, target: Target, path: str, headers: list[tuple[str, str]], timeout: float | None
    ) -> AsyncTerminal:
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            stream: trio.abc.Stream
            try:
                if target.socket_path:
                    stream = await trio.open_unix_socket(target.socket_path)
                else:
                    stream = await trio.open_tcp_stream(target.host, target.port)
                if target.scheme == "https":
                    import ssl

                    stream = trio.SSLStream(
                        stream, ssl.create_default_context(), server_hostname=target.host
                    )
            except OSError as exc:
                raise ServerUnreachableError(f"cannot connect to {target}: {exc}") from exc
            self = cls(stream, TerminalProtocol(target.host_header, target.prefix + path, headers))
            try:
                await self._stream.send_all(self._proto.open())
                while not self._proto.accepted:
                    self._early += await self._read()
                    self._proto.check_open()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return self

    async def _read(self) -> list[TerminalEvent]:
        try:
            data = await self._stream.receive_some(256 * 1024)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        events = self._proto.receive(bytes(data) if data else None)
        if out := self._proto.take_outgoing():
            await self._send(out)
        return events

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if not self._proto.closed:
                    raise ServerUnreachableError(f"terminal connection broke: {exc}") from exc

    @property
    def last_error(self) -> GardenError | None:
        return self._proto.last_error

    async def receive(self) -> list[TerminalEvent]:
        if self._early:
            events, self._early = self._early, []
            return events
        if self._proto.closed:
            return []
        return await self._read()

    async def __aiter__(self) -> AsyncIterator[TerminalEvent]:
        while self._early or not self._proto.closed:
            for event in await self.receive():
                yield event

    async def send(self, data: bytes) -> None:
        if out := self._proto.input(data) if data else b"":
            await self._send(out)

    async def resize(self, columns: int, rows: int) -> None:
        if out := self._proto.resize(columns, rows):
            await self._send(out)

    async def signal(self, signal: str | int) -> None:
        if out := self._proto.signal(signal):
            await self._send(out)

    async def aclose(self) -> None:
        try:
            if out := self._proto.close():
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    await self._send(out)
        finally:
            await trio.aclose_forcefully(self._stream)

    async def __aenter__(self) -> AsyncTerminal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
