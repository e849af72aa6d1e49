"""A small WebSocket client on trio + wsproto, for tests of the terminal route."""

from __future__ import annotations

from typing import final

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Request,
    TextMessage,
)


@final
class WebSocket:
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._events: list[Event] = []
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int, path: str) -> WebSocket:
        ws = cls(await trio.open_tcp_stream(host, port))
        await ws._send(Request(host=f"{host}:{port}", target=path))
        event = await ws._next_event()
        if not isinstance(event, AcceptConnection):
            raise ConnectionError(f"websocket refused: {event!r}")
        return ws

    async def _send(self, event: Event) -> None:
        await self._stream.send_all(self._ws.send(event))

    async def send_text(self, text: str) -> None:
        await self._send(TextMessage(data=text))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(BytesMessage(data=data))

    async def _next_event(self) -> Event:
        while not self._events:
            data = await self._stream.receive_some(65536)
            self._ws.receive_data(data or None)
            self._events.extend(self._ws.events())
            if not data and not self._events:
                raise EOFError("connection closed")
        return self._events.pop(0)

    async def receive(self) -> str | bytes | None:
        """The next whole message; None once the server closed."""
        text: list[str] = []
        binary: list[bytes] = []
        while True:
            event = await self._next_event()
            if isinstance(event, CloseConnection):
                self.closed = True
                if self._ws.state.name != "CLOSED":
                    await self._send(event.response())
                return None
            if isinstance(event, Message):
                if isinstance(event, TextMessage):
                    text.append(event.data)
                else:
                    assert isinstance(event, BytesMessage)
                    binary.append(bytes(event.data))
                if event.message_finished:
                    return "".join(text) if isinstance(event, TextMessage) else b"".join(binary)

    async def aclose(self) -> None:
        await self._stream.aclose()
