"""glibc malloc settings and the periodic trim (garden/malloc.py), and the GARDEN_TRACEMALLOC
report (garden/memdebug.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import msgspec
import pytest
import trio

from garden import malloc
from garden.config import ConfigError, ServerConfig, validate
from garden.memdebug import MemoryReporter, malloc_figures, reporter_from_env

glibc = pytest.mark.skipif(malloc._libc() is None, reason="not glibc: nothing to tune or trim")


TRIM_SCRIPT = """
from garden import malloc
malloc.tune_malloc()  # 1 MiB buffers now come from the heap, not from fresh mmaps
keep, buffers = [], []
for _ in range(64):
    buffers.append(bytearray(1 << 20))
    # live chunks between them, so the heap's top cannot shrink (48 KiB: too large for a hole
    # that the imports left below, where smaller ones would go)
    keep.append(bytes(48 << 10))
held = malloc.rss_kib()
del buffers
freed = malloc.rss_kib()
released, seconds = malloc.trim()
print(held, freed, malloc.rss_kib(), released, seconds)
"""


@glibc
def test_trim_gives_freed_heap_pages_back() -> None:
    # In a fresh process, so that no hole of the test run's heap takes the small chunks.
    out = subprocess.run(
        [sys.executable, "-c", TRIM_SCRIPT], check=True, capture_output=True, text=True
    ).stdout
    held, freed, trimmed, released, seconds = (float(x) for x in out.split())
    assert held - freed < 8 * 1024  # free() alone keeps the pages: that was the RSS growth
    assert held - trimmed > 48 * 1024 and released > 48 * 1024  # the trim gives them back
    assert seconds < 5


@glibc
def test_tune_malloc_leaves_an_operators_arena_limit_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(malloc, "_libc", Libc)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    malloc.tune_malloc()
    assert malloc._M_ARENA_MAX not in [p for p, _ in calls]
    calls.clear()
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    malloc.tune_malloc()
    assert (malloc._M_ARENA_MAX, malloc.ARENA_MAX) in calls


async def test_trim_every_zero_never_trims(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "trim", lambda: pytest.fail("trimmed"))
    with trio.fail_after(1):
        await malloc.trim_periodically(0)


async def test_trims_every_interval(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    times: list[float] = []
    monkeypatch.setattr(malloc, "_libc", lambda: object())
    monkeypatch.setattr(malloc, "trim", lambda: (0, 0.0))

    async def record_time(fn: object) -> tuple[int, float]:
        times.append(trio.current_time())
        return 0, 0.0

    monkeypatch.setattr(trio.to_thread, "run_sync", record_time)
    with trio.move_on_after(95):
        await malloc.trim_periodically(30)
    assert times == [30, 60, 90]


def test_negative_trim_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match="--malloc-trim-every"):
        validate(msgspec.structs.replace(ServerConfig(), malloc_trim_every=-1))


def test_no_reporter_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GARDEN_TRACEMALLOC", raising=False)
    assert reporter_from_env() is None


def test_report_shows_what_grew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GARDEN_TRACEMALLOC", str(tmp_path / "memory.txt"))
    was_tracing = tracemalloc.is_tracing()
    reporter = reporter_from_env()
    assert isinstance(reporter, MemoryReporter)
    try:
        reporter.report()
        grown = [[n] for n in range(20_000)]  # noqa: F841  # what the second report must show
        text = reporter.report()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    assert "== report 1" in text
    assert re.search(r"\+200\d\d +\d+ list\n", text)  # the 20,000 lists above
    assert "test_malloc.py" in text
    if malloc_figures():
        assert "free_in_heap_mib" in text
