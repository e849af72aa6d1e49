"""The server's resident memory and open file descriptors over a run, from /proc/<pid>, and
whether they stay flat: a least-squares slope over the part of the run after the warm-up."""

from __future__ import annotations

import os
import time

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
        self._t0 = time.monotonic()

    def take(self) -> Sample | None:
        sample = read_sample(self.pid, time.monotonic() - self._t0)
        if sample is not None:
            self.samples.append(sample)
        return sample

    async def run(self) -> None:
        while True:
            await trio.to_thread.run_sync(self.take)
            await trio.sleep(self.every)

    def after(self, fraction: float) -> list[Sample]:
        """The samples after the first `fraction` of the run (the warm-up)."""
        if not self.samples:
            return []
        cut = self.samples[-1].t * fraction
        return [s for s in self.samples if s.t >= cut]

    def rss_slope_mib_per_min(self, warmup: float) -> float:
        return slope_per_minute([(s.t, s.rss_kib / 1024) for s in self.after(warmup)])

    def fd_slope_per_min(self, warmup: float) -> float:
        return slope_per_minute([(s.t, float(s.fds)) for s in self.after(warmup)])
