"""The pids controller: the most tasks a container may have, and how many it has. The files
are the same in v1 and v2 (`pids.max`, `pids.current`, `pids.events`)."""

from __future__ import annotations

from pathlib import Path

from garden.errors import CgroupError
from garden.linux.cgroups.base import read_flat_keyed, read_value, write_value

# The kernel's PID_MAX_LIMIT on 64-bit: pids.max refuses larger numbers.
MAX_PIDS = 1 << 22


def set_max(d: Path, limit: int | None) -> int | None:
    write_value(d / "pids.max", str(limit) if limit is not None else "max")
    return read_max(d)


def read_max(d: Path) -> int | None:
    raw = read_value(d / "pids.max")
    if raw is None:
        raise CgroupError(f"read {d / 'pids.max'}", "the cgroup does not exist")
    return None if raw == "max" else int(raw)


def stats(d: Path) -> dict[str, int]:
    current = read_value(d / "pids.current")
    if current is None:
        return {}
    out = {"current": int(current)}
    raw_max = read_value(d / "pids.max")
    if raw_max is not None and raw_max != "max":
        out["max"] = int(raw_max)
    events = read_flat_keyed(d / "pids.events")
    if "max" in events:
        out["max_reached"] = events["max"]  # forks refused because of pids.max
    return out
