"""A debug switch for memory growth: with `GARDEN_TRACEMALLOC=<file>` in its environment the
server traces Python allocations (`tracemalloc`, `GARDEN_TRACEMALLOC_FRAMES` frames, default 1;
0: no tracing, for figures undisturbed by its cost) and, on each SIGUSR2, appends a report to
`<file>`: RSS, the traced total, the allocator's figures (glibc's mallinfo2: in use vs free
inside the arenas, and the number of arenas; or jemalloc's allocated, active, resident), the object
counts by type that changed most, and the allocation sites that grew most since the previous
report. Python heap growth shows in the traced total and the sites; allocator fragmentation
shows as RSS far above the traced total with the difference free inside glibc's arenas.

Off (and not imported by anything hot) unless the variable is set; see docs/operations.md.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Final, final

import trio

from garden.allocator import jemalloc_stats

ENV: Final = "GARDEN_TRACEMALLOC"
ENV_FRAMES: Final = "GARDEN_TRACEMALLOC_FRAMES"
TOP: Final = 25
MIB: Final = 1 << 20


_FIELDS: Final = (
    "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
    "fordblks", "keepcost",
)  # fmt: skip


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)


def malloc_figures() -> dict[str, int]:
    """glibc's totals over all arenas (empty when not glibc): bytes obtained from the system
    for the heaps (`arena`), in use (`uordblks`), free inside them (`fordblks`), in mmapped
    chunks (`hblkhd`), and the number of arenas."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = _MallInfo2
    m = mallinfo2()
    figures = {name: int(getattr(m, name)) for name in _FIELDS}
    figures["arenas"] = _arena_count(libc)
    return figures


def _arena_count(libc: ctypes.CDLL) -> int:
    """The number of arenas, from malloc_info's XML (written to a temporary file)."""
    try:
        fopen, fclose, malloc_info = libc.fopen, libc.fclose, libc.malloc_info
    except AttributeError:
        return 0
    fopen.restype = ctypes.c_void_p
    fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    fclose.argtypes = [ctypes.c_void_p]
    malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    fd, path = tempfile.mkstemp(prefix="garden-malloc-info-", suffix=".xml")
    os.close(fd)
    fp = fopen(path.encode(), b"w")
    if not fp:
        Path(path).unlink(missing_ok=True)
        return 0
    try:
        malloc_info(0, fp)
    finally:
        fclose(fp)
    try:
        return Path(path).read_text().count("<heap nr=")
    finally:
        Path(path).unlink(missing_ok=True)


@final
class MemoryReporter:
    """Appends a report to `path` per call of `report`; keeps the previous snapshot and type
    counts to diff against."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._snapshot: tracemalloc.Snapshot | None = None
        self._types: Counter[str] = Counter()
        self._count = 0

    def report(self) -> str:
        gc.collect()
        snapshot = None
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces(
                (tracemalloc.Filter(False, tracemalloc.__file__),)
            )
        traced, peak = tracemalloc.get_traced_memory()
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        lines = [
            f"== report {self._count} at {time.strftime('%H:%M:%S')} pid {os.getpid()}",
            f"rss_mib {rss_kib() / 1024:.1f} traced_mib {traced / MIB:.1f}"
            f" traced_peak_mib {peak / MIB:.1f} gc_objects {sum(types.values())}",
        ]
        m = malloc_figures()
        je = jemalloc_stats()
        if je:
            lines.append(
                "jemalloc "
                + " ".join(f"{name}_mib {value / MIB:.1f}" for name, value in je.items())
                # the rest of RSS: pymalloc's arenas, code, thread stacks
                + f" rest_mib {(rss_kib() * 1024 - je['resident']) / MIB:.1f}"
            )
        elif m:
            lines.append(
                f"malloc arenas {m['arenas']} heap_mib {m['arena'] / MIB:.1f}"
                f" in_use_mib {m['uordblks'] / MIB:.1f} free_in_heap_mib {m['fordblks'] / MIB:.1f}"
                f" mmapped_mib {m['hblkhd'] / MIB:.1f} top_releasable_mib {m['keepcost'] / MIB:.1f}"
                # the rest of RSS: pymalloc's arenas, code, thread stacks
                f" rest_mib {(rss_kib() * 1024 - m['arena'] - m['hblkhd']) / MIB:.1f}"
            )
        changed = types.copy()
        changed.subtract(self._types)
        lines.append("-- object counts by type, most changed since the last report")
        for name, delta in sorted(changed.items(), key=lambda kv: -abs(kv[1]))[:TOP]:
            if delta:
                lines.append(f"{delta:+9d} {types[name]:9d} {name}")
        if snapshot is None:
            pass  # GARDEN_TRACEMALLOC_FRAMES=0: figures and object counts only
        elif self._snapshot is not None:
            lines.append("-- allocation sites, most grown since the last report (caller > callee)")
            for stat in snapshot.compare_to(self._snapshot, "traceback")[:TOP]:
                lines.append(
                    f"{stat.size_diff / 1024:+10.1f} KiB {stat.size / 1024:10.1f} KiB"
                    f" {stat.count_diff:+7d} {stat.count:7d} "
                    + " > ".join(
                        f"{'/'.join(f.filename.rsplit('/', 2)[-2:])}:{f.lineno}"
                        for f in stat.traceback
                    )
                )
        else:
            lines.append("-- allocation sites, largest")
            for largest in snapshot.statistics("traceback")[:TOP]:
                lines.append(
                    f"{largest.size / 1024:10.1f} KiB {largest.count:7d} {largest.traceback[0]}"
                )
        self._snapshot, self._types = snapshot, types
        self._count += 1
        text = "\n".join(lines) + "\n"
        with open(self.path, "a") as f:
            f.write(text)
        return text


def reporter_from_env() -> MemoryReporter | None:
    """Start tracing if `GARDEN_TRACEMALLOC` is set; the reporter that writes to its file."""
    target = os.environ.get(ENV, "")
    if not target:
        return None
    frames = int(os.environ.get(ENV_FRAMES, "1") or 1)
    if frames > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(frames)
    return MemoryReporter(Path(target))


async def report_on_signal(reporter: MemoryReporter) -> None:
    """A report per SIGUSR2, until cancelled."""
    with trio.open_signal_receiver(signal.SIGUSR2) as signals:
        async for _ in signals:
            reporter.report()
