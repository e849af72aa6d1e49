"""The benchmarks that every engine runs, interleaved: create + destroy (with and without
networking), running `true` and `echo` to their exit status, and 256 MiB of stdout through one
stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.engine import Engine
from bench.results import Cell, Row, cell_from_samples
from bench.stats import Op, Parts, interleave

OP_TIMEOUT = 180.0
MIB = 1 << 20


@dataclass
class Options:
    rounds: int = 20
    warmup: int = 2
    stdout_mib: int = 256
    stdout_rounds: int = 3
    concurrent: int = 200
    concurrent_rounds: int = 3
    fleet: int = 50
    fleet_clients: int = 10
    rps_clients: int = 50
    rps_seconds: float = 5.0
    restart_events: int = 1_000_000
    restart_containers: int = 1000
    restart_rounds: int = 3
    only: frozenset[str] = frozenset()


@dataclass
class Context:
    options: Options
    work_dir: Path
    engines: dict[str, Engine]  # the available ones, ours first
    skipped: dict[str, str] = field(default_factory=dict)  # engine -> why it is not measured

    def wants(self, key: str) -> bool:
        return not self.options.only or any(key.startswith(o) for o in self.options.only)


def bounded(fn: Callable[[], Awaitable[Parts]]) -> Op:
    async def op() -> Parts:
        with trio.fail_after(OP_TIMEOUT):
            return await fn()

    return op


def _cells(
    ctx: Context, samples: dict[str, list[Parts]], failed: dict[str, str], unsupported: str
) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for name in [*ctx.engines, *ctx.skipped]:
        if name in failed:
            cells[name] = Cell(skipped=f"failed: {failed[name]}")
        elif samples.get(name):
            cells[name] = cell_from_samples(samples[name])
        elif name in ctx.skipped:
            cells[name] = Cell(skipped=ctx.skipped[name])
        else:
            cells[name] = Cell(skipped=unsupported)
    return cells


async def create_destroy(ctx: Context, *, network: bool) -> Row:
    """Create a container (running its init), then destroy it; parts in ms."""
    key = "create_destroy_net" if network else "create_destroy"

    def op_for(engine: Engine) -> Op:
        async def op() -> Parts:
            id, created = await engine.create(network=network)
            destroyed = await engine.destroy(id)
            return {
                "create": created * 1000,
                "destroy": destroyed * 1000,
                "total": (created + destroyed) * 1000,
            }

        return bounded(op)

    ops = {
        n: op_for(e)
        for n, e in ctx.engines.items()
        if (e.supports_network() if network else e.supports_no_network())
    }
    samples, failed = await interleave(ops, rounds=ctx.options.rounds, warmup=ctx.options.warmup)
    unsupported = "no networking of its own" if network else "not supported"
    cells = _cells(ctx, samples, failed, unsupported)
    if "garden" in cells and not samples.get("garden") and "garden" not in failed:
        cells["garden"] = Cell(
            skipped="every container gets an address (the API has no way to ask for none)"
            if not network
            else "the server has no networking (yet)"
        )
    title = "create + destroy, with network" if network else "create + destroy, no network"
    return Row(key=key, title=title, unit="ms", cells=cells)


async def exec_rows(ctx: Context) -> list[Row]:
    """`true`, `echo hi` and N MiB of zeros on stdout, each engine in a container of its own
    made beforehand (not timed)."""
    containers: dict[str, str] = {}
    rows: list[Row] = []
    try:
        for name, engine in ctx.engines.items():
            with trio.fail_after(OP_TIMEOUT):
                containers[name], _ = await engine.create(network=False)

        def op_for(name: str, argv: list[str], expect: int, unit: str) -> Op:
            engine, id = ctx.engines[name], containers[name]

            async def op() -> Parts:
                done = await engine.exec(id, argv)
                if done.status != 0 or done.stdout_bytes != expect:
                    raise RuntimeError(
                        f"{argv[0]}: exit {done.status}, {done.stdout_bytes} bytes of stdout "
                        f"where {expect} were expected"
                    )
                if unit == "MB/s":
                    return {"total": expect / done.seconds / 1e6, "seconds": done.seconds}
                return {"total": done.seconds * 1000}

            return bounded(op)

        size = ctx.options.stdout_mib * MIB
        dd = ["dd", "if=/dev/zero", "bs=1M", f"count={ctx.options.stdout_mib}"]
        cases = [
            ("run_true", "run `true` → exit status", ["true"], 0, "ms", ctx.options.rounds),
            ("run_echo", "run `echo hi` → output + exit status", ["echo", "hi"], 3, "ms",
             ctx.options.rounds),
            ("stdout", f"{ctx.options.stdout_mib} MiB of stdout, one stream", dd, size, "MB/s",
             ctx.options.stdout_rounds),
        ]  # fmt: skip
        for key, title, argv, expect, unit, rounds in cases:
            if not ctx.wants(key):
                continue
            ops = {n: op_for(n, argv, expect, unit) for n in ctx.engines}
            warmup = ctx.options.warmup if unit == "ms" else 1
            samples, failed = await interleave(ops, rounds=rounds, warmup=warmup)
            cells = _cells(ctx, samples, failed, "not supported")
            rows.append(
                Row(key=key, title=title, unit=unit, cells=cells,
                    better="higher" if unit == "MB/s" else "lower")
            )  # fmt: skip
        return rows
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(OP_TIMEOUT):
            for name, id in containers.items():
                await ctx.engines[name].destroy(id)


def engine_cells(ctx: Context, measured: dict[str, Cell], unsupported: str) -> dict[str, Cell]:
    """`measured` plus a skipped cell for every other engine."""
    out: dict[str, Cell] = {}
    for name in dict.fromkeys([*measured, *ctx.engines, *ctx.skipped]):
        if name in measured:
            out[name] = measured[name]
        else:
            out[name] = Cell(skipped=ctx.skipped.get(name, unsupported))
    return out
