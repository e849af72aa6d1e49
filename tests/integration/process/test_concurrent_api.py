"""Many processes started at once in one container through the API: each gets its own output
and exit status exactly, each is attachable while it runs, and a destroy that arrives while
spawns are still in flight leaves nothing behind (the `server` fixture checks leftovers)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.integration.conftest import Server

pytestmark = pytest.mark.root

N = 24


async def stream(server: Server, method: str, path: str, **kw: Any) -> list[dict[str, Any]]:
    async with server.client.stream(method, path, **kw) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        return [json.loads(line) async for line in r.aiter_lines() if line]


def joined(payloads: list[dict[str, Any]], source: str) -> str:
    return "".join(p["data"] for p in payloads if p.get("source") == source)


async def test_many_processes_at_once_exact_output_and_status(server: Server) -> None:
    assert (await server.client.post("/containers", json={"handle": "many"})).status_code == 200
    results: dict[int, list[dict[str, Any]]] = {}
    attached: dict[int, list[dict[str, Any]]] = {}
    release = "/tmp/go"

    async def one(i: int) -> None:
        # Each waits until every one runs, so all N are alive (and attachable) at once.
        script = (
            f"echo out-{i}; echo err-{i} >&2; "
            f"while [ ! -e {release} ]; do sleep 0.05; done; echo done-{i}; exit {i + 1}"
        )
        spec = {"path": "sh", "args": ["-c", script], "id": f"p{i}"}
        results[i] = await stream(server, "POST", "/containers/many/processes", json=spec)

    async with trio.open_nursery() as nursery:
        for i in range(N):
            nursery.start_soon(one, i)
        with trio.fail_after(60):
            while len((await server.client.get("/containers/many/info")).json()["process_ids"]) < N:
                await trio.sleep(0.05)

        async def attach(i: int) -> None:
            attached[i] = await stream(server, "GET", f"/containers/many/processes/p{i}")

        for i in range(N):
            nursery.start_soon(attach, i)
        spec = {"path": "touch", "args": [release], "id": "go"}
        go = await stream(server, "POST", "/containers/many/processes", json=spec)
        assert go[-1] == {"process_id": "go", "exit_status": 0}
    for i in range(N):
        for payloads in (results[i], attached[i]):
            assert payloads[0] == {"process_id": f"p{i}"}
            assert joined(payloads, "stdout") == f"out-{i}\ndone-{i}\n"
            assert joined(payloads, "stderr") == f"err-{i}\n"
            assert payloads[-1] == {"process_id": f"p{i}", "exit_status": i + 1}
    info = (await server.client.get("/containers/many/info")).json()
    assert info["process_ids"] == []


async def test_destroy_while_spawns_are_in_flight(server: Server) -> None:
    assert (await server.client.post("/containers", json={"handle": "gone"})).status_code == 200
    answers: list[int] = []

    async def one(i: int) -> None:
        spec = {"path": "sleep", "args": ["30"], "id": f"s{i}"}
        async with server.client.stream("POST", "/containers/gone/processes", json=spec) as r:
            answers.append(r.status_code)
            async for _ in r.aiter_lines():
                pass

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(one, i)
        await trio.sleep(0.02)  # let some spawns start: the point is a destroy that overlaps them
        r = await server.client.delete("/containers/gone")
        assert r.status_code == 200, r.text
    # Every spawn either ran (and was killed by the destroy) or was refused as the container
    # went: none hangs, and the fixture finds no process, monitor or file left.
    assert len(answers) == 8
    assert set(answers) <= {200, 404, 409}
