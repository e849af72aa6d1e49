"""Process routes over the fake kernel: stream framing, encodings, signals, errors."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from garden.errors import InvalidRequestError
from garden.http.routes_processes import signal_number
from tests.unit.fakes import FakeProcesses, serve_fakes


@pytest.fixture
async def fake(
    tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeProcesses]]:
    processes = FakeProcesses()
    url = await serve_fakes(nursery, tmp_path, processes=processes)
    async with httpx.AsyncClient(base_url=url) as c:
        assert (await c.post("/containers", json={"handle": "c"})).status_code == 200
        yield c, processes
    nursery.cancel_scope.cancel()


async def read_stream(
    c: httpx.AsyncClient,
    processes: FakeProcesses,
    spec: dict[str, object],
    params: dict[str, str] | None = None,
) -> list[dict[str, object]]:
    async with c.stream("POST", "/containers/c/processes", json=spec, params=params) as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        first = json.loads(await lines.__anext__())
        facts = next(
            f
            for f in processes.spawned.values()
            if f.process_dir.endswith(str(first["process_id"]))
        )
        processes.finish(facts, 9)
        return [first] + [json.loads(line) async for line in lines if line]


async def test_stream_framing_and_utf8_joining(
    fake: tuple[httpx.AsyncClient, FakeProcesses],
) -> None:
    c, processes = fake
    payloads = await read_stream(c, processes, {"path": "echo", "args": ["a", "b"], "id": "p"})
    assert payloads == [
        {"process_id": "p"},
        {"process_id": "p", "source": "stdout", "data": "a b"},
        {"process_id": "p", "source": "stderr", "data": "err"},
        {"process_id": "p", "source": "stderr", "data": "é"},
        {"process_id": "p", "exit_status": 9},
    ]


async def test_base64_encoding(fake: tuple[httpx.AsyncClient, FakeProcesses]) -> None:
    c, processes = fake
    payloads = await read_stream(c, processes, {"path": "x", "id": "b"}, {"encoding": "base64"})
    stderr = b"".join(
        base64.b64decode(str(p["data"])) for p in payloads if p.get("source") == "stderr"
    )
    assert stderr == b"err\xc3\xa9"
    r = await c.post("/containers/c/processes", json={"path": "x"}, params={"encoding": "rot13"})
    assert r.status_code == 400


async def test_errors_before_the_stream(fake: tuple[httpx.AsyncClient, FakeProcesses]) -> None:
    c, _ = fake
    r = await c.post("/containers/c/processes", json={"path": "/missing"})
    assert r.status_code == 404
    assert r.json()["type"] == "ExecutableNotFoundError"
    r = await c.post("/containers/c/processes", json={"path": "x", "id": "bad id"})
    assert r.status_code == 400
    r = await c.post("/containers/c/processes/nope/signal", json={"signal": "TERM"})
    assert r.status_code == 404
    assert (await c.put("/containers/c/stop", json={})).status_code == 200
    r = await c.post("/containers/c/processes", json={"path": "x"})
    assert r.status_code == 409
    assert r.json()["type"] == "ContainerStoppedError"


@pytest.mark.parametrize(
    ("given", "number"), [("TERM", 15), ("SIGKILL", 9), ("hup", 1), (2, 2), ("10", 10)]
)
def test_signal_number(given: str | int, number: int) -> None:
    assert signal_number(given) == number


@pytest.mark.parametrize("given", ["NOPE", 0, -1, 10_000, "SIG"])
def test_bad_signal(given: str | int) -> None:
    with pytest.raises(InvalidRequestError):
        signal_number(given)
