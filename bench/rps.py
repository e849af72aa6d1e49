"""Requests per second of a container's info (`GET /containers/:h/info`; Docker: `GET
/containers/:id/json`) under many concurrent keep-alive clients. The clients run in this
process on the same two cores as the server, so the client's CPU time is reported next to the
server's: a client near 100% of a core is what limits the number."""

from __future__ import annotations

import os
import time

import trio

from bench.cases import OP_TIMEOUT, Context, engine_cells
from bench.engine import Engine
from bench.http import Connection
from bench.memory import pids_named
from bench.results import Cell, Row
from bench.stats import summarise


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    engine: Engine, id: str, server_pids: list[int], clients: int, seconds: float
) -> Cell:
    assert engine.info_address is not None
    target = engine.info_target(id)
    latencies: list[float] = []
    done = 0
    measuring = False

    async def client(stop: trio.Event) -> None:
        nonlocal done
        conn = await Connection.open(engine.info_address)  # type: ignore[arg-type]
        try:
            while not stop.is_set():
                started = time.perf_counter()
                status, _ = await conn.call("GET", target)
                if status != 200:
                    raise RuntimeError(f"GET {target}: {status}")
                if not conn.reusable:  # hypercorn closes after 1000 requests on a connection
                    await conn.aclose()
                    conn = await Connection.open(engine.info_address)  # type: ignore[arg-type]
                if measuring:
                    latencies.append(time.perf_counter() - started)
                    done += 1
        finally:
            await conn.aclose()

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client, stop)
        await trio.sleep(min(1.0, seconds / 5))  # warm-up: connections open, caches warm
        measuring = True
        client_cpu, server_cpu = time.process_time(), sum(map(_cpu_seconds, server_pids))
        started = time.perf_counter()
        await trio.sleep(seconds)
        measuring = False
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_cpu = sum(map(_cpu_seconds, server_pids)) - server_cpu
        stop.set()
    lat = summarise(latencies) if latencies else None
    extra: dict[str, float | str] = {
        "client CPU %": client_cpu / elapsed * 100,
        "server CPU %": server_cpu / elapsed * 100,
        "requests": float(done),
    }
    if lat is not None:
        extra["latency median ms"] = lat.median * 1000
        extra["latency p90 ms"] = lat.p90 * 1000
    return Cell(value=done / elapsed, extra=extra)


async def rps_row(ctx: Context, server_pid: int) -> Row:
    n, seconds = ctx.options.rps_clients, ctx.options.rps_seconds
    cells: dict[str, Cell] = {}
    for name, engine in ctx.engines.items():
        if engine.info_address is None:
            continue
        pids = [server_pid] if name == "garden" else pids_named("dockerd")
        with trio.fail_after(OP_TIMEOUT):
            id, _ = await engine.create(network=False)
        try:
            with trio.fail_after(OP_TIMEOUT + seconds):
                cells[name] = await measure(engine, id, pids, n, seconds)
        except Exception as exc:
            cells[name] = Cell(skipped=f"failed: {type(exc).__name__}: {exc}"[:500])
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(OP_TIMEOUT):
                await engine.destroy(id)
    return Row(
        key="info_rps", title=f"GET info, {n} concurrent clients", unit="req/s", better="higher",
        cells=engine_cells(ctx, cells, "no HTTP API"),
        note="clients and server share the 2 cores: see client/server CPU % in the breakdown",
    )  # fmt: skip
