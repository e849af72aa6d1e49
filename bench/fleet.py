"""N containers created by 10 concurrent clients: the time until all run, the host memory they
cost (PSS of the engine's daemons' growth, its per-container monitors and the inits), the time
to destroy them all, and for garden-trio the restart of its server with all of them alive."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from bench.cases import OP_TIMEOUT, Context, engine_cells
from bench.engine import Engine, Pids
from bench.memory import Memory, of_pids
from bench.results import Cell, Row

MIB_KIB = 1024.0
RestartHook = Callable[[], Awaitable[float]]
# Engines whose containers run in a user namespace with root mapped to garden's uid base: each
# container's init holds a session keyring charged to that host uid.
USERNS_ENGINES = ("garden", "runc", "crun")


def keys_free(uid: int) -> tuple[int, int]:
    """(keys the kernel still lets `uid` own, its maximum), from /proc/key-users and
    kernel.keys.maxkeys: every container's init holds a session keyring of its user, so a
    non-root uid (the mapped root of unprivileged containers) caps how many can run."""
    maximum = int(Path("/proc/sys/kernel/keys/maxkeys").read_text())
    for line in Path("/proc/key-users").read_text().splitlines():
        owner, _, rest = line.partition(":")
        if owner.strip() == str(uid):
            used, _, _ = rest.split()[2].partition("/")
            return maximum - int(used), maximum
    return maximum, maximum


async def _spread(n: int, clients: int, job: Callable[[], Awaitable[None]]) -> float:
    """Run `job` n times from `clients` concurrent tasks; the seconds until all are done."""
    shares = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]

    async def client(count: int) -> None:
        for _ in range(count):
            await job()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for count in shares:
            if count:
                nursery.start_soon(client, count)
    return time.perf_counter() - started


async def fleet_rows(ctx: Context, restart_ours: RestartHook) -> list[Row]:
    n, clients = ctx.options.fleet, ctx.options.fleet_clients
    running: dict[str, Cell] = {}
    memory: dict[str, Cell] = {}
    destroyed: dict[str, Cell] = {}
    restarted: dict[str, Cell] = {}
    from garden.config import DEFAULT_UID_BASE

    free, maximum = keys_free(DEFAULT_UID_BASE)
    for name, engine in ctx.engines.items():
        ids: list[str] = []
        if name in USERNS_ENGINES and free < n + 10:
            why = (
                f"the kernel lets uid {DEFAULT_UID_BASE} (the containers' mapped root) own "
                f"{maximum} keys and {free} are free: each container's init holds a session "
                "keyring, so raise kernel.keys.maxkeys and maxbytes (docs/performance.md)"
            )
            running[name] = memory[name] = Cell(skipped=why)
            continue
        try:
            before = of_pids((await engine.pids([])).daemons)

            async def create(engine: Engine = engine, ids: list[str] = ids) -> None:
                id, _ = await engine.create(network=engine.supports_network())
                ids.append(id)

            with trio.fail_after(OP_TIMEOUT + n * 2.0):
                seconds = await _spread(n, clients, create)
            running[name] = Cell(value=seconds, extra={"per container ms": seconds / n * 1000})
            memory[name] = _memory_cell(n, before, await engine.pids(ids))
            if name == "garden":
                restarted[name] = Cell(value=await restart_ours())
        except Exception as exc:
            why = f"failed after {len(ids)} containers: {type(exc).__name__}: {exc}"[:500]
            running.setdefault(name, Cell(skipped=why))
            memory.setdefault(name, Cell(skipped=why))
        finally:
            pending = list(ids)

            async def destroy(engine: Engine = engine, pending: list[str] = pending) -> None:
                await engine.destroy(pending.pop())

            with trio.CancelScope(shield=True), trio.move_on_after(OP_TIMEOUT + n * 2.0):
                seconds = await _spread(len(pending), clients, destroy)
                if ids:
                    destroyed[name] = Cell(value=seconds)
    title = f"{n} containers, {clients} clients"
    return [
        Row(key="fleet_running", title=f"{title}: all running", unit="s",
            cells=engine_cells(ctx, running, "not supported")),
        Row(key="fleet_memory", title=f"{title}: host memory per container", unit="MiB PSS",
            cells=engine_cells(ctx, memory, "not supported"),
            note="daemon growth + monitor/shim + init, divided by N; see the breakdown. "
            "Containers have networking where the engine makes one (not runc, crun)"),
        Row(key="fleet_destroyed", title=f"{title}: all destroyed", unit="s",
            cells=engine_cells(ctx, destroyed, "not supported")),
        Row(key="restart_live", title=f"restart with {n} live containers → /ping", unit="s",
            cells=engine_cells(ctx, restarted, "no server to restart")),
    ]  # fmt: skip


def _memory_cell(n: int, before: Memory, pids: Pids) -> Cell:
    daemons = of_pids(pids.daemons).minus(before)
    monitors = of_pids(pids.monitors)
    inits = of_pids(pids.inits)
    per = (daemons.pss_kib + monitors.pss_kib + inits.pss_kib) / n / MIB_KIB
    return Cell(
        value=per,
        extra={
            "daemon growth MiB/container": daemons.pss_kib / n / MIB_KIB,
            "monitors MiB/container": monitors.pss_kib / n / MIB_KIB,
            "inits MiB/container": inits.pss_kib / n / MIB_KIB,
            "beyond the inits MiB/container": (daemons.pss_kib + monitors.pss_kib) / n / MIB_KIB,
            "monitor processes": float(monitors.processes),
            "init processes": float(inits.processes),
            "daemon RSS growth MiB/container": daemons.rss_kib / n / MIB_KIB,
        },
    )
