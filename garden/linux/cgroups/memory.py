"""The memory controller: the limit (memory and memory+swap), its statistics and the count of
OOM kills, for v1 (`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`, `memory.oom_control`)
and v2 (`memory.max`, `memory.swap.max`, `memory.events`).

Functions take the container's directory in the memory hierarchy (v1) or its unified directory
(v2). A container's memory limit covers swap too: v1 sets memsw to the same value, v2 allows no
swap at all while a limit is set.
"""

from __future__ import annotations

import errno
from pathlib import Path

from garden.errors import CgroupError, ConflictError
from garden.linux.cgroups.base import errno_of, read_flat_keyed, read_value, write_value

# v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 with 4 KiB pages).
V1_UNLIMITED_FROM = 1 << 62


def _below_use(limit: int | None, d: Path) -> ConflictError:
    return ConflictError(
        f"memory limit {limit} is below what the container uses and the kernel could not "
        f"reclaim enough ({d.name})"
    )


def set_limit_v1(d: Path, limit: int | None) -> int | None:
    """Set the limit (None: no limit) and return the limit now in force (page-rounded).
    memsw must never be below the memory limit, so it is written first when raising and last
    when lowering."""
    mem, memsw = d / "memory.limit_in_bytes", d / "memory.memsw.limit_in_bytes"
    value = str(limit) if limit is not None else "-1"
    current = limit_v1(d)
    raising = limit is None or (current is not None and limit > current)
    order = [memsw, mem] if raising else [mem, memsw]
    try:
        for f in order:
            if f is memsw and not memsw.exists():
                continue  # no swap accounting on this host: memory alone is the limit
            write_value(f, value)
    except CgroupError as e:
        if errno_of(e) == errno.EBUSY:
            raise _below_use(limit, d) from e
        raise
    return limit_v1(d)


def limit_v1(d: Path) -> int | None:
    raw = read_value(d / "memory.limit_in_bytes")
    if raw is None:
        raise CgroupError(f"read {d / 'memory.limit_in_bytes'}", "the cgroup does not exist")
    value = int(raw)
    return None if value < 0 or value >= V1_UNLIMITED_FROM else value


def stats_v1(d: Path) -> dict[str, int]:
    stat = read_flat_keyed(d / "memory.stat")
    if not stat:
        return {}
    out = dict(stat)
    for name in ("usage_in_bytes", "max_usage_in_bytes", "failcnt"):
        raw = read_value(d / f"memory.{name}")
        if raw is not None and raw.isdigit():
            out[name] = int(raw)
    limit = read_value(d / "memory.limit_in_bytes")
    if limit is not None and int(limit) < V1_UNLIMITED_FROM:
        out["limit_in_bytes"] = int(limit)
    out["oom_kill"] = oom_kills_v1(d) or 0
    return out


def oom_kills_v1(d: Path) -> int | None:
    """The `oom_kill` counter of memory.oom_control; None if the cgroup is gone."""
    if read_value(d / "memory.oom_control") is None:
        return None
    return read_flat_keyed(d / "memory.oom_control").get("oom_kill", 0)


def set_limit_v2(d: Path, limit: int | None) -> int | None:
    value = str(limit) if limit is not None else "max"
    try:
        write_value(d / "memory.max", value)
    except CgroupError as e:
        if errno_of(e) == errno.EBUSY:
            raise _below_use(limit, d) from e
        raise
    if (d / "memory.swap.max").exists():
        write_value(d / "memory.swap.max", "0" if limit is not None else "max")
    return limit_v2(d)


def limit_v2(d: Path) -> int | None:
    raw = read_value(d / "memory.max")
    if raw is None:
        raise CgroupError(f"read {d / 'memory.max'}", "the cgroup does not exist")
    return None if raw == "max" else int(raw)


def stats_v2(d: Path) -> dict[str, int]:
    """v2 figures under the names v1 clients know: rss (anon), cache (file), usage_in_bytes."""
    stat = read_flat_keyed(d / "memory.stat")
    if not stat:
        return {}
    out = dict(stat)
    out["rss"] = stat.get("anon", 0)
    out["cache"] = stat.get("file", 0)
    current = read_value(d / "memory.current")
    if current is not None and current.isdigit():
        out["usage_in_bytes"] = int(current)
    peak = read_value(d / "memory.peak")
    if peak is not None and peak.isdigit():
        out["max_usage_in_bytes"] = int(peak)
    limit = read_value(d / "memory.max")
    if limit is not None and limit.isdigit():
        out["limit_in_bytes"] = int(limit)
    out["oom_kill"] = oom_kills_v2(d) or 0
    return out


def oom_kills_v2(d: Path) -> int | None:
    if read_value(d / "memory.events") is None:
        return None
    return read_flat_keyed(d / "memory.events").get("oom_kill", 0)
