"""The HTTP front end over a real hypercorn listener on 127.0.0.1, with the fake kernel: routes,
the error model of API.md, and connection handling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from garden.config import ServerConfig
from garden.main import serve
from tests.unit.fakes import FakeKernel, FakeNetworker, FakeProcesses, serve_fakes


@pytest.fixture
async def client(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=await serve_fakes(nursery, tmp_path)) as c:
        yield c
    nursery.cancel_scope.cancel()


async def test_ping_and_capacity(client: httpx.AsyncClient) -> None:
    r = await client.get("/ping")
    assert r.status_code == 200
    assert r.json() == {}
    assert r.headers["X-Request-Id"]
    cap = (await client.get("/capacity")).json()
    assert cap["memory_in_bytes"] > 0
    assert cap["disk_in_bytes"] > 0
    # --max-containers is 1024, but the default pool (a /22) holds only 256 dynamic /30s.
    assert cap["max_containers"] == 256


async def test_container_life_cycle(client: httpx.AsyncClient) -> None:
    r = await client.post("/containers", json={"handle": "web", "properties": {"tier": "a"}})
    assert r.status_code == 200, r.text
    assert r.json() == {"handle": "web"}
    assert (await client.get("/containers")).json() == {"handles": ["web"]}
    assert (await client.get("/containers?tier=a")).json() == {"handles": ["web"]}
    assert (await client.get("/containers?tier=b")).json() == {"handles": []}
    info = (await client.get("/containers/web/info")).json()
    assert info["state"] == "active"
    assert info["properties"] == {"tier": "a"}
    assert info["container_path"].endswith(info["container_path"].rsplit("/", 1)[-1])
    r = await client.put("/containers/web/properties/owner", json={"value": "me"})
    assert r.status_code == 200
    assert (await client.get("/containers/web/properties/owner")).json() == {"value": "me"}
    props = (await client.get("/containers/web/properties")).json()
    assert props == {"tier": "a", "owner": "me"}
    assert (await client.delete("/containers/web/properties/owner")).status_code == 200
    r = await client.get("/containers/web/properties/owner")
    assert r.status_code == 404
    assert r.json()["type"] == "PropertyNotFoundError"
    assert (await client.put("/containers/web/grace_time", json={"grace_time": 60})).json() == {}
    assert (await client.get("/containers/web/info")).json()["grace_time"] == 60
    assert (await client.put("/containers/web/stop", json={"kill": True})).status_code == 200
    assert (await client.get("/containers/web/info")).json()["state"] == "stopped"
    assert (await client.delete("/containers/web")).json() == {}
    r = await client.delete("/containers/web")
    assert r.status_code == 404
    assert r.json() == {
        "type": "ContainerNotFoundError",
        "message": "unknown handle: web",
        "handle": "web",
        "process_id": "",
    }


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind"),
    [
        ("POST", "/containers", b"{not json", 400, "InvalidRequestError"),
        ("POST", "/containers", b'{"handle": 5}', 400, "InvalidRequestError"),
        ("POST", "/containers", b'{"handle": "bad handle"}', 400, "InvalidRequestError"),
        ("POST", "/containers", b'{"env": "x"}', 400, "InvalidRequestError"),
        ("POST", "/containers", b"[]", 400, "InvalidRequestError"),
        ("GET", "/containers/nope/info", b"", 404, "ContainerNotFoundError"),
        ("GET", "/containers/bad%20handle/info", b"", 400, "InvalidRequestError"),
        ("DELETE", "/containers/nope", b"", 404, "ContainerNotFoundError"),
        ("PUT", "/containers/nope/stop", b"{}", 404, "ContainerNotFoundError"),
        ("GET", "/no/such/route", b"", 404, "RouteNotFoundError"),
        ("PATCH", "/containers", b"", 405, "MethodNotAllowedError"),
    ],
)
async def test_errors(
    client: httpx.AsyncClient, method: str, path: str, body: bytes, status: int, kind: str
) -> None:
    r = await client.request(method, path, content=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["type"] == kind
    assert err["message"]
    assert (await client.get("/ping")).status_code == 200


async def test_unknown_keys_are_ignored_and_conflicts(client: httpx.AsyncClient) -> None:
    r = await client.post("/containers", json={"handle": "x", "whatever": [1, 2]})
    assert r.status_code == 200
    r = await client.post("/containers", json={"handle": "x"})
    assert r.status_code == 409
    assert r.json()["type"] == "HandleInUseError"
    assert r.json()["message"] == "handle 'x' already in use"


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    r = await client.get("/ping", headers={"X-Request-Id": "abc-123"})
    assert r.headers["X-Request-Id"] == "abc-123"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ping HTTP/1.0\r\nHost: x\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ],
)
async def test_connection_close_regression_hypercorn_330(
    client: httpx.AsyncClient, request_bytes: bytes
) -> None:
    """quart-trio on hypercorn's trio worker never closed these connections (DESIGN.md)."""
    url = httpx.URL(str(client.base_url))
    assert url.port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", url.port)
    await stream.send_all(request_bytes)
    data = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            data += chunk
    await stream.aclose()
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"{}")


async def test_created_event_records_origin(client: httpx.AsyncClient, tmp_path: Path) -> None:
    await client.post("/containers", json={"handle": "o"}, headers={"X-Request-Id": "req-7"})
    from garden.events.log import EventLog

    log = EventLog.open(tmp_path / "state" / "events.log", readonly=True)
    try:
        created = [r for r in log.records() if type(r.event).__name__ == "ContainerCreateStarted"]
    finally:
        log.close()
    assert created[0].origin.request_id == "req-7"
    assert created[0].origin.client == "127.0.0.1"
    assert msgspec.to_builtins(created[0].event)["handle"] == "o"


async def test_events_route_history_filters_and_follow(client: httpx.AsyncClient) -> None:
    import json

    await client.post("/containers", json={"handle": "e1"}, headers={"X-Request-Id": "r1"})
    await client.put("/containers/e1/properties/k", json={"value": "v"})
    r = await client.get("/events")
    records = [json.loads(line) for line in r.text.splitlines()]
    assert [rec["seq"] for rec in records] == list(range(1, len(records) + 1))
    types = [rec["event"]["type"] for rec in records]
    assert types[0] == "ServerStarted"
    assert types[-3:] == ["ContainerCreateStarted", "ContainerCreated", "PropertySet"]
    r = await client.get("/events", params={"handle": "e1", "type": "PropertySet"})
    only = [json.loads(line) for line in r.text.splitlines()]
    assert [rec["event"] for rec in only] == [
        {"type": "PropertySet", "handle": "e1", "key": "k", "value": "v"}
    ]
    last = records[-1]["seq"]
    assert (await client.get("/events", params={"since": last})).text == ""
    assert (await client.get("/events", params={"since": "x"})).status_code == 400
    async with client.stream("GET", "/events", params={"since": last, "follow": "true"}) as r:
        lines = r.aiter_lines()
        await client.put("/containers/e1/properties/k2", json={"value": "v2"})
        followed = json.loads(await lines.__anext__())
    assert followed["seq"] == last + 1
    assert followed["event"]["key"] == "k2"


async def test_base64_stream_lines_are_the_json_of_the_output(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # The base64 lines are assembled from bytes (no JSON encoder): they must be exactly what
    # encoding the object would give, and decode to the exact bytes.
    import base64

    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    config = ServerConfig(
        state_dir=str(tmp_path / "state"), default_rootfs=str(rootfs), bind_port=0,
        tag="gtest", handle_signals=False,
    )  # fmt: skip
    processes = FakeProcesses()
    binds = await nursery.start(
        partial(serve, config, kernel=FakeKernel(), processes=processes, networker=FakeNetworker())
    )
    async with httpx.AsyncClient(base_url=binds[0]) as c:
        assert (await c.post("/containers", json={"handle": "b64"})).status_code == 200
        async with c.stream(
            "POST", "/containers/b64/processes?encoding=base64",
            # (a NUL cannot be in an argument: execve would cut it; the API refuses it)
            json={"path": "echo", "args": ["a\x01b", "c"], "id": "p1"},
        ) as r:  # fmt: skip
            lines = []
            async for line in r.aiter_lines():
                lines.append(line)
                if len(lines) == 4:
                    processes.finish(next(iter(processes.spawned.values())), 0)
    expected = [
        {"process_id": "p1"},
        {"process_id": "p1", "source": "stdout", "data": base64.b64encode(b"a\x01b c").decode()},
        {"process_id": "p1", "source": "stderr", "data": base64.b64encode(b"err\xc3").decode()},
        {"process_id": "p1", "source": "stderr", "data": base64.b64encode(b"\xa9").decode()},
        {"process_id": "p1", "exit_status": 0},
    ]
    assert lines == [msgspec.json.encode(e).decode() for e in expected]
    nursery.cancel_scope.cancel()
