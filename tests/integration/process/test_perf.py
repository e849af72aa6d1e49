"""Measurements (printed; run with -s): spawn-to-exit latency and output throughput.

The assertions are loose sanity bounds; the numbers are the point.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import time

import pytest
import trio

from garden.linux import monitor, output
from tests.integration.process.conftest import RUNC, Container
from tests.integration.process.helpers import collect, passthrough, process_json, spawn

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    return f"median {statistics.median(s) * 1000:.1f} ms, p90 {s[int(len(s) * 0.9)] * 1000:.1f} ms"


async def test_latency_of_true(container: Container, watcher: output.LogWatcher) -> None:
    proc = process_json(container, "true")
    ours, bare = [], []
    for _ in range(20):
        t = time.perf_counter()
        facts = await spawn(container, proc)
        assert await monitor.wait_exit(facts) == 0
        ours.append(time.perf_counter() - t)
        await monitor.cleanup(facts)
        t = time.perf_counter()
        await trio.run_process(
            [RUNC, "--root", str(container.runtime_root), "exec", container.id, "true"],
            stdin=subprocess.DEVNULL,
        )
        bare.append(time.perf_counter() - t)
    print(f"\nspawn->exit `true` via conmon: {_ms(ours)}; bare `runc exec`: {_ms(bare)}")
    assert statistics.median(ours) < 1.0


@pytest.mark.parametrize("log_format", ["k8s-file", "passthrough"])
@pytest.mark.parametrize(
    "what,script",
    [
        ("zeros", "dd if=/dev/zero bs=1M count=256 2>/dev/null"),
        ("random", "dd if=/tmp/random bs=1M 2>/dev/null"),
        ("text lines", "dd if=/tmp/lines bs=1M 2>/dev/null"),
        ("small writes", "dd if=/tmp/lines bs=4k 2>/dev/null"),
    ],
)
async def test_throughput(
    container: Container, watcher: output.LogWatcher, what: str, script: str, log_format: str
) -> None:
    size = 256 << 20
    _make_input(container, what, size)
    t = time.perf_counter()
    try:
        if log_format == "passthrough":
            async with passthrough(container, watcher, script) as (facts, indexed):
                assert indexed.index is not None
                follow = watcher.follow_passthrough(indexed.index, facts.exit_path)
                async with contextlib.aclosing(follow) as chunks:
                    total = sum([len(c.data) async for c in chunks])
                elapsed = time.perf_counter() - t
                assert await monitor.wait_exit(facts) == 0
        else:
            facts = await spawn(container, process_json(container, "sh", "-c", script))
            try:
                total = sum(len(c.data) for c in await collect(watcher, facts))
                elapsed = time.perf_counter() - t
                assert await monitor.wait_exit(facts) == 0
            finally:
                await monitor.cleanup(facts)
    finally:
        for name in ("random", "lines"):
            (container.rootfs / "tmp" / name).unlink(missing_ok=True)
    assert total == size
    rate = size / elapsed / 1e6
    print(f"\n{what}: {rate:.0f} MB/s through conmon {log_format} -> follow ({elapsed:.2f} s)")


def _make_input(container: Container, what: str, size: int) -> None:
    tmp = container.rootfs / "tmp"
    if what == "random":
        (tmp / "random").write_bytes(os.urandom(size))
    if what in ("text lines", "small writes"):
        line = b"x" * 99 + b"\n"
        (tmp / "lines").write_bytes(line * (size // 100) + line[: size % 100])
