"""The terminal's WebSocket protocol without I/O: a wsproto server produces the bytes."""

from __future__ import annotations

import json

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from garden import errors as e
from garden.client.terminal import (
    TerminalClosed,
    TerminalExited,
    TerminalNotice,
    TerminalOutput,
    TerminalProtocol,
)


def pair() -> tuple[TerminalProtocol, WSConnection]:
    client = TerminalProtocol(
        "h:1", "/containers/c/processes/p/ws", [("Authorization", "Bearer t")]
    )
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.open())
    request = next(server.events())
    assert isinstance(request, Request)
    assert request.target == "/containers/c/processes/p/ws"
    assert (b"authorization", b"Bearer t") in request.extra_headers
    return client, server


def test_everything_in_one_read() -> None:
    client, server = pair()
    data = server.send(AcceptConnection())
    data += server.send(BytesMessage(data=b"$ "))
    data += server.send(TextMessage(data=json.dumps({"exit_status": 3})))
    data += server.send(CloseConnection(code=1000))
    events = client.receive(data)
    assert events == [TerminalOutput(b"$ "), TerminalExited(3), TerminalClosed(1000, "")]
    assert client.accepted and client.closed
    client.check_open()  # accepted, then closed: not a handshake failure
    assert client.input(b"late") == client.resize(1, 1) == client.signal("INT") == b""
    server.receive_data(client.take_outgoing())
    assert isinstance(next(server.events()), CloseConnection)


def test_frames_from_the_client() -> None:
    client, server = pair()
    client.receive(server.send(AcceptConnection()))
    server.receive_data(client.input(b"ls\r") + client.resize(120, 40) + client.signal("INT"))
    got = list(server.events())
    assert isinstance(got[0], BytesMessage) and got[0].data == b"ls\r"
    assert isinstance(got[1], TextMessage)
    assert json.loads(got[1].data) == {"resize": {"columns": 120, "rows": 40}}
    assert isinstance(got[2], TextMessage) and json.loads(got[2].data) == {"signal": "INT"}


def test_pings_fragments_and_error_frames() -> None:
    client, server = pair()
    client.receive(server.send(AcceptConnection()))
    assert client.receive(server.send(Ping(payload=b"x"))) == []
    server.receive_data(client.take_outgoing())
    assert isinstance(next(server.events()), Pong)
    half = server.send(TextMessage(data='{"exit_', message_finished=False))
    assert client.receive(half) == []
    error = {"error": {"type": "ProcessNotFoundError", "message": "no such process"}}
    events = client.receive(server.send(TextMessage(data='status": 0}')))
    assert events == [TerminalExited(0)]
    [notice] = client.receive(server.send(TextMessage(data=json.dumps(error))))
    assert isinstance(notice, TerminalNotice)
    assert isinstance(notice.error, e.ProcessNotFoundError)
    [notice] = client.receive(server.send(TextMessage(data='{"error": "no stdin"}')))
    assert isinstance(notice, TerminalNotice) and notice.error.message == "no stdin"
    assert client.receive(server.send(TextMessage(data='{"later": 1}'))) == []
    assert client.receive(None) == [TerminalClosed(1006)]


def test_a_refused_upgrade_raises_its_error() -> None:
    client, server = pair()
    body = json.dumps({"type": "ContainerNotFoundError", "message": "unknown handle: c"}).encode()
    data = server.send(
        RejectConnection(
            status_code=404,
            headers=[(b"content-length", str(len(body)).encode())],
            has_body=True,
        )
    )
    data += server.send(RejectData(data=body))
    with pytest.raises(e.ContainerNotFoundError, match="unknown handle: c"):
        client.receive(data)


def test_broken_connections() -> None:
    client, _ = pair()
    with pytest.raises(e.ServerUnreachableError, match="before the WebSocket upgrade"):
        client.receive(None)
    client, _ = pair()
    with pytest.raises(e.UnexpectedResponseError, match="protocol error"):
        client.receive(b"SSH-2.0\r\n\r\n")
