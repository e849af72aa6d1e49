"""The server's resident memory and open file descriptors over a run, from /proc/<pid>, and
whether they stay flat: a least-squares slope over the part of the run after the warm-up."""

from __future__ import annotations

import os
import re
import time
from collections import Counter

import msgspec
import trio


class Sample(msgspec.Struct, frozen=True, array_like=True):
    t: float  # seconds since the run started
    rss_kib: int
    fds: int


def read_sample(pid: int, t: float) -> Sample | None:
    """RSS (VmRSS) and the number of open descriptors of `pid`; None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return Sample(t=round(t, 2), rss_kib=rss, fds=fds)


_SOCKET = re.compile(r"socket:\[(\d+)\]")
_NET_TABLES = ("tcp", "tcp6", "udp", "udp6", "unix", "netlink", "raw", "packet")


def _socket_kinds(pid: int) -> dict[str, str]:
    """inode → the /proc/<pid>/net table that lists it (tcp sockets with their state)."""
    kinds: dict[str, str] = {}
    for table in _NET_TABLES:
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if table == "unix" and len(cols) >= 7:
                kinds.setdefault(cols[6], "unix")
            elif table == "netlink" and len(cols) >= 10:
                kinds.setdefault(cols[-1], "netlink")
            elif table.startswith(("tcp", "udp")) and len(cols) >= 10:
                kinds.setdefault(cols[9], f"{table} st={cols[3]} local={cols[1]}")
            elif len(cols) >= 10:
                kinds.setdefault(cols[-1], table)
    return kinds


def _protocol(pid: int, fd: str) -> str:
    """A socket's protocol by the kernel's own name (for one of another network namespace)."""
    try:
        name = os.getxattr(f"/proc/{pid}/fd/{fd}", "system.sockprotoname")
    except OSError:
        return "?"
    return name.rstrip(b"\0").decode(errors="replace") + " (not in this netns' tables)"


def fd_kinds(pid: int) -> Counter[str]:
    """What `pid`'s open descriptors point at, counted: paths as they are, sockets by the
    table that lists them, pipes and anonymous inodes by kind (empty if `pid` is gone)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return Counter()
    targets: list[str] = []
    for name in names:
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            targets.append("(closed meanwhile)")
    sockets = _socket_kinds(pid) if any(t.startswith("socket:") for t in targets) else {}
    kinds: Counter[str] = Counter()
    for name, target in zip(names, targets, strict=True):
        if m := _SOCKET.fullmatch(target):
            kinds["socket " + (sockets.get(m.group(1)) or _protocol(pid, name))] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        else:
            kinds[target] += 1
    return kinds


def fd_diff(before: Counter[str], after: Counter[str]) -> list[str]:
    """The descriptors `after` holds beyond `before`, as "+N kind" lines (most first)."""
    grown = after - before
    return [f"+{n} {kind}" for kind, n in grown.most_common()]


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of (seconds, value) points, in value per minute (0 below 3)."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60


class Sampler:
    """Samples `pid` every `every` seconds while `run` runs."""

    def __init__(self, pid: int, every: float) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()

    def take(self) -> Sample | None:
        sample = read_sample(self.pid, time.monotonic() - self.t0)
        if sample is not None:
            self.samples.append(sample)
        return sample

    async def run(self) -> None:
        while True:
            await trio.to_thread.run_sync(self.take)
            await trio.sleep(self.every)

    def warmup_end(self, fraction: float, not_before: float = 0.0) -> float:
        """The end of the warm-up: the first `fraction` of the run, or `not_before` seconds
        (when the server's bounded caches were full) if that is later."""
        if not self.samples:
            return 0.0
        return max(self.samples[-1].t * fraction, not_before)

    def after(self, fraction: float, not_before: float = 0.0) -> list[Sample]:
        """The samples after the warm-up (`warmup_end`)."""
        cut = self.warmup_end(fraction, not_before)
        return [s for s in self.samples if s.t >= cut]

    def rss_slope_mib_per_min(self, warmup: float, not_before: float = 0.0) -> float:
        return slope_per_minute([(s.t, s.rss_kib / 1024) for s in self.after(warmup, not_before)])

    def fd_slope_per_min(self, warmup: float, not_before: float = 0.0) -> float:
        return slope_per_minute([(s.t, float(s.fds)) for s in self.after(warmup, not_before)])
