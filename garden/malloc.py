"""glibc malloc in the server: the settings that let large buffers stream at disk speed, the
number of arenas, and a periodic trim that hands freed heap pages back to the kernel.

Why (measured with `GARDEN_TRACEMALLOC`, docs/performance.md#load-test): under `just load` the
Python heap stays flat (a few MiB traced) while RSS climbed 5-6 MiB/min, all of it memory that
glibc held free inside its arenas. Streaming buffers of ~1 MiB live in the arenas (the fixed
mmap threshold below, for speed), every worker thread of `trio.to_thread` may get an arena of
its own (up to 8 per core), and glibc gives an arena's free pages back only from the top of a
heap and only past the trim threshold; pages freed in the middle of a heap stay resident until
`malloc_trim`. So:

- `M_MMAP_THRESHOLD` 8 MiB: a 1 MiB buffer comes from the heap, not a fresh mmap that is
  paid for in page faults and zeroing on every use (file transfers: ~3x less CPU).
- `M_TRIM_THRESHOLD` 64 MiB: the top of the main heap is not given back and faulted in again
  between two bursts.
- `M_ARENA_MAX` 2: fewer arenas, less free memory kept in
  each; the server's threads are few and short, so contention on them does not show.
- `trim_periodically`: `malloc_trim(0)` every `--malloc-trim-every` seconds (30; 0 = never),
  in a worker thread: RSS comes back to what is in use, and a burst of streams between two
  trims still reuses its buffers.

None of this applies when the server runs with jemalloc (`garden/allocator.py`, the default
where the library is installed): the functions below do nothing then.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from typing import Final

import trio

from garden.allocator import active

log = logging.getLogger("garden.malloc")

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
MMAP_THRESHOLD: Final = 8 << 20
TRIM_THRESHOLD: Final = 64 << 20
ARENA_MAX: Final = 2
TRIM_EVERY: Final = 30.0


def _libc() -> ctypes.CDLL | None:
    """glibc's malloc functions, or None when malloc is not glibc's."""
    if active() != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018  # glibc, or nothing to tune
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc() -> None:
    """The thresholds and the arena limit above (nothing when not on glibc); each is left to
    glibc's environment variable where that is set (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
    `MALLOC_TRIM_THRESHOLD_`)."""
    libc = _libc()
    if libc is None:
        return
    settings = [
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ("MALLOC_ARENA_MAX", _M_ARENA_MAX, ARENA_MAX),
    ]
    for env, param, value in settings:
        if os.environ.get(env):
            continue  # glibc's own variable, set by the operator, wins

        if libc.mallopt(param, value) != 1:
            log.warning("tuning-skipped what=mallopt param=%d value=%d", param, value)


def rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def trim() -> tuple[int, float]:
    """`malloc_trim(0)`: the KiB of RSS it gave back and the seconds it took."""
    libc = _libc()
    if libc is None:
        return 0, 0.0
    before, started = rss_kib(), time.perf_counter()
    libc.malloc_trim(0)
    took = time.perf_counter() - started
    return max(0, before - rss_kib()), took


async def trim_periodically(every: float = TRIM_EVERY) -> None:
    """Trim every `every` seconds until cancelled (never when `every` is 0 or not glibc)."""
    if every <= 0 or _libc() is None:
        return
    while True:
        await trio.sleep(every)
        released, took = await trio.to_thread.run_sync(trim)
        log.debug("heap-trimmed released_kib=%d seconds=%.4f", released, took)
