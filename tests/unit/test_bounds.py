"""Hostile input over a real server (fake kernel): bodies, headers, counts and sizes answered
with a 400 or 413 of API.md's error shape, with nothing recorded; slow clients do not hold the
server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import trio

from garden import bounds
from tests.unit.fakes import FakeProcesses, serve_fakes

ERROR_KEYS = {"type", "message", "handle", "process_id"}


async def _events(http: httpx.AsyncClient) -> bytes:
    return (await http.get("/events")).content


def _is_error(r: httpx.Response, status: int, kind: str) -> None:
    assert r.status_code == status, r.text
    assert set(r.json()) == ERROR_KEYS
    assert r.json()["type"] == kind


@pytest.fixture
async def http(tmp_path: Path, nursery: trio.Nursery) -> httpx.AsyncClient:
    url = await serve_fakes(nursery, tmp_path, max_body_bytes=128 * 1024)
    return httpx.AsyncClient(base_url=url, timeout=30)


async def test_json_body_over_the_limit_is_413_and_records_nothing(http: httpx.AsyncClient) -> None:
    before = await _events(http)
    big = {"handle": "big", "env": ["A=" + "x" * (130 * 1024)]}
    _is_error(await http.post("/containers", json=big), 413, "PayloadTooLargeError")
    # Without a Content-Length (chunked) too.
    import json

    async def chunks():  # type: ignore[no-untyped-def]
        data = json.dumps(big).encode()
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    _is_error(await http.post("/containers", content=chunks()), 413, "PayloadTooLargeError")
    assert await _events(http) == before
    assert (await http.post("/containers", json={"handle": "small"})).status_code == 200


async def test_oversized_headers_are_refused(http: httpx.AsyncClient) -> None:
    r = await http.get("/ping", headers={"X-Big": "x" * (bounds.MAX_HEADER_BYTES + 1)})
    _is_error(r, 400, "InvalidRequestError")
    many = {f"X-H{i}": "v" for i in range(bounds.MAX_HEADERS)}
    r = await http.get("/ping", headers=many)
    _is_error(r, 400, "InvalidRequestError")
    r = await http.get("/containers?" + "&".join(f"k{i}=v" for i in range(3000)))
    _is_error(r, 400, "InvalidRequestError")
    assert (await http.get("/ping")).status_code == 200


@pytest.mark.parametrize(
    ("spec", "what"),
    [
        ({"properties": {f"k{i}": "v" for i in range(bounds.MAX_PROPERTIES + 1)}}, "properties"),
        (
            {"properties": [{"key": "k", "value": "v"}] * (bounds.MAX_PROPERTIES + 1)},
            "properties",
        ),
        ({"properties": {"k" * (bounds.MAX_PROPERTY_KEY + 1): "v"}}, "key"),
        ({"properties": {"k": "v" * bounds.MAX_PROPERTY_BYTES}}, "larger"),
        ({"env": [f"A{i}=1" for i in range(bounds.MAX_ENV_ENTRIES + 1)]}, "env entries"),
        ({"env": ["A\u0000B=1"]}, "NAME=value"),
        (
            {"bind_mounts": [{"src_path": "/tmp", "dst_path": f"/m{i}"} for i in range(65)]},
            "bind mounts",
        ),
        ({"bind_mounts": [{"src_path": "/tmp\u0000x", "dst_path": "/m"}]}, "absolute"),
        ({"bind_mounts": [{"src_path": "/proc", "dst_path": "/m"}]}, "expose"),
        ({"bind_mounts": [{"src_path": "/proc/self", "dst_path": "/m"}]}, "expose"),
        ({"bind_mounts": [{"src_path": "/sys/kernel", "dst_path": "/m"}]}, "expose"),
        ({"bind_mounts": [{"src_path": "/dev", "dst_path": "/m"}]}, "expose"),
        ({"bind_mounts": [{"src_path": "/", "dst_path": "/m"}]}, "expose"),
        ({"bind_mounts": [{"src_path": "/tmp", "dst_path": "/a/../../b"}]}, ".."),
        ({"rootfs": "/"}, "expose"),
        ({"rootfs": "/proc"}, "expose"),
    ],
)
async def test_create_bounds_are_400_and_record_nothing(
    http: httpx.AsyncClient, spec: dict[str, object], what: str
) -> None:
    before = await _events(http)
    r = await http.post("/containers", json={"handle": "h", **spec})
    _is_error(r, 400, "InvalidRequestError")
    assert what in r.json()["message"]
    assert await _events(http) == before
    assert (await http.get("/containers")).json()["handles"] == []


async def test_property_count_and_total_are_bounded_per_container(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds, "MAX_PROPERTIES", 3)
    monkeypatch.setattr(bounds, "MAX_PROPERTIES_TOTAL", 100)
    assert (
        await http.post("/containers", json={"handle": "c", "properties": {"a": "1"}})
    ).is_success
    for key in ("b", "c"):
        assert (await http.put(f"/containers/c/properties/{key}", json={"value": "v"})).is_success
    before = await _events(http)
    _is_error(
        await http.put("/containers/c/properties/d", json={"value": "v"}),
        400,
        "InvalidRequestError",
    )
    # Replacing one is not one more.
    assert (await http.put("/containers/c/properties/a", json={"value": "2"})).is_success
    _is_error(
        await http.put("/containers/c/properties/a", json={"value": "x" * 100}),
        400,
        "InvalidRequestError",
    )
    assert (await http.get("/containers/c/properties")).json() == {"a": "2", "b": "v", "c": "v"}
    assert (await _events(http)).count(b"PropertySet") == before.count(b"PropertySet") + 1


async def test_running_processes_are_bounded_per_container(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds, "MAX_PROCESSES", 2)
    assert (await http.post("/containers", json={"handle": "p"})).is_success
    for i in range(2):
        async with http.stream(
            "POST", "/containers/p/processes", json={"path": "sleep", "id": f"p{i}"}
        ) as r:
            assert r.status_code == 200
    r = await http.post("/containers/p/processes", json={"path": "sleep", "id": "p2"})
    _is_error(r, 400, "InvalidRequestError")
    assert "running processes" in r.json()["message"]


@pytest.mark.parametrize(
    "spec",
    [
        {"path": "sh", "args": ["x"] * (bounds.MAX_ARGS + 1)},
        {"path": "sh", "env": ["NOEQUALS"]},
        {"path": "sh\u0000"},
        {"path": "sh", "dir": "/tmp\u0000"},
        {"path": "sh", "user": "root\u0000"},
    ],
)
async def test_process_spec_bounds(http: httpx.AsyncClient, spec: dict[str, object]) -> None:
    assert (await http.post("/containers", json={"handle": "q"})).is_success
    before = await _events(http)
    _is_error(await http.post("/containers/q/processes", json=spec), 400, "InvalidRequestError")
    assert (await _events(http)) == before


async def test_net_rules_are_bounded_per_container(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds, "MAX_NET_OUT", 2)
    monkeypatch.setattr(bounds, "MAX_NET_IN", 1)
    assert (await http.post("/containers", json={"handle": "n"})).is_success
    for port in (80, 81):
        assert (
            await http.post("/containers/n/net/out", json={"protocol": "tcp", "port": port})
        ).is_success
    r = await http.post("/containers/n/net/out", json={"protocol": "tcp", "port": 82})
    _is_error(r, 400, "InvalidRequestError")
    assert (await http.post("/containers/n/net/in", json={})).is_success
    r = await http.post("/containers/n/net/in", json={})
    _is_error(r, 400, "InvalidRequestError")
    info = (await http.get("/containers/n/info")).json()
    assert len(info["mapped_ports"]) == 1
    # The refused mapping gave its host port back to the pool: the next container gets it.
    capacity_before = (await http.get("/capacity")).json()
    assert capacity_before["max_containers"] > 0


async def test_stdin_is_not_bounded_by_the_body_limit(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    received = bytearray()

    class Stdin:
        async def send_all(self, data: bytes) -> None:
            received.extend(data)

        async def aclose(self) -> None:
            pass

    async def open_stdin(self: object, facts: object) -> Stdin:
        return Stdin()

    monkeypatch.setattr(FakeProcesses, "open_stdin", open_stdin)
    assert (await http.post("/containers", json={"handle": "s"})).is_success
    async with http.stream(
        "POST", "/containers/s/processes", json={"path": "cat", "id": "cat", "stdin": True}
    ) as r:
        assert r.status_code == 200
        big = b"x" * (1024 * 1024)  # eight times the server's body limit
        put = await http.put("/containers/s/processes/cat/stdin", content=big)
        assert put.status_code == 200, put.text
    assert len(received) == len(big)


async def test_slow_clients_do_not_hold_the_server(tmp_path: Path, nursery: trio.Nursery) -> None:
    """200 clients trickling their request heads a byte at a time; ping still answers at once,
    and the keep-alive timer closes the tricklers."""
    url = await serve_fakes(nursery, tmp_path, keep_alive_timeout=4.0)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    closed = 0

    async def trickle() -> None:
        nonlocal closed
        stream = await trio.open_tcp_stream(host, int(port))
        try:
            await stream.send_all(b"GET /ping HTTP/1.1\r\n")
            for _ in range(60):
                await stream.send_all(b"X")
                await trio.sleep(0.5)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            closed += 1
        finally:
            await stream.aclose()

    async with trio.open_nursery() as slow:
        for _ in range(200):
            slow.start_soon(trickle)
        await trio.sleep(0.5)
        async with httpx.AsyncClient(base_url=url) as http:
            worst = 0.0
            for _ in range(20):
                started = time.perf_counter()
                assert (await http.get("/ping")).status_code == 200
                worst = max(worst, time.perf_counter() - started)
        assert worst < 1.0, worst
        with trio.fail_after(30):
            while closed < 200:
                await trio.sleep(0.1)
