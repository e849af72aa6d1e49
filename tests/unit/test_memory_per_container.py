"""Nothing of a destroyed container stays in the server's memory: the whole server (HTTP, actors,
journal, state) on the fake kernel, many create → run → properties → destroy cycles, and no
type of object may grow with the number of cycles (the RSS growth of `just load`, issue #10,
was the allocator's, not the heap's: docs/performance.md#load-test)."""

from __future__ import annotations

import gc
import json
import urllib.parse
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio
import trio._core._run as trio_run

from garden.events import journal as journal_module
from tests.unit.fakes import FakeKernel, FakeProcesses, serve_fakes

CYCLES = 20  # per round: a leak of one object per container shows as >= CYCLES more


def counts() -> Counter[str]:
    """Live objects by type, after dropping what bounded caches outside the server hold: the
    stale entries of trio's deadline heap (pruned only past 1,000 + 2 x active ones) and
    urllib's split cache (128 entries)."""
    runner = getattr(getattr(trio_run, "GLOBAL_RUN_CONTEXT", None), "runner", None)
    prune = getattr(getattr(runner, "deadlines", None), "_prune", None)
    if prune is not None:  # without it, trio.CancelScope shows up below: look here
        prune()
    urllib.parse.clear_cache()  # type: ignore[attr-defined]  # (not in typeshed)
    gc.collect()
    return Counter(
        f"{type(o).__module__}.{type(o).__qualname__}"
        for o in gc.get_objects()
        # the test's own side: the HTTP client and the fakes, which remember every call
        if not type(o).__module__.startswith(("httpx", "httpcore", "tests."))
    )


async def cycle(c: httpx.AsyncClient, processes: FakeProcesses, kernel: FakeKernel, n: int) -> None:
    handle = f"m-{n}"
    body = {"handle": handle, "properties": {"k": str(n)}, "limits": {"pids": {"max": 10}}}
    assert (await c.post("/containers", json=body)).status_code == 200
    assert (
        await c.put(f"/containers/{handle}/properties/x", json={"value": "y"})
    ).status_code == 200
    async with c.stream("POST", f"/containers/{handle}/processes", json={"path": "echo"}) as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        first = json.loads(await lines.__anext__())
        facts = next(
            f for f in processes.spawned.values() if f.process_dir.endswith(first["process_id"])
        )
        processes.finish(facts, 0)
        assert [json.loads(line) async for line in lines if line][-1]["exit_status"] == 0
    assert (await c.get(f"/containers/{handle}/info")).status_code == 200
    assert (await c.get("/metrics")).status_code == 200
    assert (await c.delete(f"/containers/{handle}")).status_code == 200
    # the fakes remember every process and call: that is the test's memory, not the server's
    for table in (processes.spawned, processes.outputs, processes.exits, processes.statuses):
        table.clear()
    kernel.calls.clear()
    kernel.stopped_inits.clear()
    kernel.ooms.clear()


async def test_destroyed_containers_leave_no_objects_behind(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The journal keeps the last RECENT records for its followers (bounded): keep it small
    # here so that the window is full after the warm-up round.
    monkeypatch.setattr(journal_module, "RECENT", 16)
    processes, kernel = FakeProcesses(), FakeKernel()
    url = await serve_fakes(
        nursery, tmp_path, processes=processes, kernel=kernel, malloc_trim_every=0
    )
    async with httpx.AsyncClient(base_url=url) as c:
        for n in range(CYCLES):  # warm-up: caches, connections, the journal's window
            await cycle(c, processes, kernel, n)
        before = counts()
        for n in range(CYCLES, 3 * CYCLES):
            await cycle(c, processes, kernel, n)
        after = counts()
        assert (await c.get("/containers")).json() == {"handles": []}
    grown = {name: after[name] - before[name] for name in after if after[name] - before[name] > 0}
    per_container = {name: d for name, d in grown.items() if d >= 2 * CYCLES}
    assert not per_container, f"grew with every destroyed container: {per_container}"
    nursery.cancel_scope.cancel()
