"""N processes (200 by default) started at once in one container, each `sleep 1`, until every
exit status is in: a spawn path that serializes shows as N times its spawn time, one that runs
spawns side by side as about the sleep plus the machine's share of the work."""

from __future__ import annotations

import time

import trio

from bench.cases import OP_TIMEOUT, Context, _cells, bounded
from bench.results import Row
from bench.stats import Op, Parts, interleave

SLEEP_S = 1.0


async def concurrent_row(ctx: Context) -> Row:
    n = ctx.options.concurrent
    containers: dict[str, str] = {}
    try:
        for name, engine in ctx.engines.items():
            with trio.fail_after(OP_TIMEOUT):
                containers[name], _ = await engine.create(network=False)

        def op_for(name: str) -> Op:
            engine, id = ctx.engines[name], containers[name]

            async def op() -> Parts:
                statuses: list[int] = []
                firsts: list[float] = []
                started = time.perf_counter()

                async def one() -> None:
                    done = await engine.exec(id, ["sleep", str(SLEEP_S)])
                    statuses.append(done.status)
                    firsts.append(time.perf_counter() - started)

                async with trio.open_nursery() as nursery:
                    for _ in range(n):
                        nursery.start_soon(one)
                seconds = time.perf_counter() - started
                bad = [s for s in statuses if s != 0]
                if len(statuses) != n or bad:
                    raise RuntimeError(f"{len(statuses)} of {n} exited, non-zero: {bad[:5]}")
                return {
                    "total": seconds,
                    "first exit s": min(firsts),
                    "spawn overhead per process ms": (seconds - SLEEP_S) / n * 1000,
                }

            return bounded(op)

        ops = {n: op_for(n) for n in ctx.engines}
        samples, failed = await interleave(
            ops, rounds=ctx.options.concurrent_rounds, warmup=min(1, ctx.options.warmup)
        )
        cells = _cells(ctx, samples, failed, "not supported")
        title = f"{n}x `sleep 1` at once in one container → all exit statuses"
        return Row(key="concurrent", title=title, unit="s", cells=cells)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(OP_TIMEOUT):
            for name, id in containers.items():
                await ctx.engines[name].destroy(id)
