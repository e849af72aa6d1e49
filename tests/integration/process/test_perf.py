"""Measurements (printed; run with -s): spawn-to-exit latency and output throughput.

The assertions are loose sanity bounds; the numbers are the point.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time

import pytest
import trio

from garden.linux import monitor, output
from tests.integration.process.conftest import RUNC, Container
from tests.integration.process.helpers import collect, process_json, spawn

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


@pytest.mark.parametrize(
    "what,script",
    [
        ("zeros", "dd if=/dev/zero bs=1M count=256 2>/dev/null"),
        ("random", "dd if=/tmp/random bs=1M 2>/dev/null"),
        ("text lines", "dd if=/tmp/lines bs=1M 2>/dev/null"),
    ],
)
async def test_throughput(
    container: Container, watcher: output.LogWatcher, what: str, script: str
) -> None:
    size = 256 << 20
    _make_input(container, what, size)
    facts = await spawn(container, process_json(container, "sh", "-c", script))
    t = time.perf_counter()
    try:
        total = sum(len(c.data) for c in await collect(watcher, facts))
        elapsed = time.perf_counter() - t
        await monitor.wait_exit(facts)
    finally:
        await monitor.cleanup(facts)
    assert total == size
    rate = size / elapsed / 1e6
    print(f"\n{what}: {rate:.0f} MB/s through conmon -> log -> follow ({elapsed:.2f} s)")
    for name in ("random", "lines"):
        (container.rootfs / "tmp" / name).unlink(missing_ok=True)


def _make_input(container: Container, what: str, size: int) -> None:
    tmp = container.rootfs / "tmp"
    if what == "random":
        (tmp / "random").write_bytes(os.urandom(size))
    if what == "text lines":
        line = b"x" * 99 + b"\n"
        (tmp / "lines").write_bytes(line * (size // 100) + line[: size % 100])
