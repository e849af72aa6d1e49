"""The cpu controller: relative weight and usage. The API speaks v1 `cpu.shares` (2..262144,
default 1024); v2 has `cpu.weight` (1..10000, default 100), mapped with the formula runc and
crun use, and read back as shares."""

from __future__ import annotations

from pathlib import Path

from garden.errors import CgroupError
from garden.linux.cgroups.base import read_flat_keyed, read_value, write_value

MIN_SHARES = 2
MAX_SHARES = 262144
DEFAULT_SHARES = 1024
USER_HZ = 100  # cpuacct.stat counts in USER_HZ ticks (sysconf(_SC_CLK_TCK), 100 on Linux)


def shares_to_weight(shares: int) -> int:
    """runc/crun's mapping: 2 → 1, 262144 → 10000, 1024 → 39."""
    return 1 + ((shares - 2) * 9999) // 262142


def weight_to_shares(weight: int) -> int:
    """The smallest shares value that maps to `weight` (so a round trip is stable)."""
    if weight <= 1:
        return MIN_SHARES
    return min(MAX_SHARES, 2 + -(-((weight - 1) * 262142) // 9999))


def set_shares_v1(d: Path, shares: int | None) -> int:
    write_value(d / "cpu.shares", str(shares if shares is not None else DEFAULT_SHARES))
    return shares_v1(d)


def shares_v1(d: Path) -> int:
    raw = read_value(d / "cpu.shares")
    if raw is None:
        raise CgroupError(f"read {d / 'cpu.shares'}", "the cgroup does not exist")
    return int(raw)


def stats_v1(cpuacct: Path) -> dict[str, int]:
    """usage (ns) from cpuacct.usage; user and system (ns) from cpuacct.stat's ticks."""
    usage = read_value(cpuacct / "cpuacct.usage")
    if usage is None:
        return {}
    out = {"usage": int(usage)}
    ticks = read_flat_keyed(cpuacct / "cpuacct.stat")
    for key in ("user", "system"):
        if key in ticks:
            out[key] = ticks[key] * (1_000_000_000 // USER_HZ)
    return out


def set_shares_v2(d: Path, shares: int | None) -> int:
    weight = shares_to_weight(shares) if shares is not None else 100
    write_value(d / "cpu.weight", str(weight))
    return shares_v2(d)


def shares_v2(d: Path) -> int:
    raw = read_value(d / "cpu.weight")
    if raw is None:
        raise CgroupError(f"read {d / 'cpu.weight'}", "the cgroup does not exist")
    return weight_to_shares(int(raw))


def stats_v2(d: Path) -> dict[str, int]:
    stat = read_flat_keyed(d / "cpu.stat")
    if "usage_usec" not in stat:
        return {}
    out = {"usage": stat["usage_usec"] * 1000}
    for key in ("user", "system"):
        if f"{key}_usec" in stat:
            out[key] = stat[f"{key}_usec"] * 1000
    for key in ("nr_periods", "nr_throttled", "throttled_usec"):
        if key in stat:
            out[key] = stat[key]
    return out
