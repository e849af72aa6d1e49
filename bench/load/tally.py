"""What the clients of a load run count: latencies per operation, failures (errors the client
did not cause: these must stay at zero) and the answers to requests that were bad on purpose."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec


class OpStats(msgspec.Struct, frozen=True, kw_only=True):
    count: int
    p50_ms: float
    p95_ms: float
    max_ms: float


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted samples (0 for none)."""
    if not ordered:
        return 0.0
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


class LoadFailure(Exception):
    """A step of a client went wrong in a way the client did not cause."""


class Tally:
    """Shared by every client task (one trio thread: no locks needed)."""

    def __init__(self) -> None:
        self.latencies: defaultdict[str, list[float]] = defaultdict(list)
        self.failures: Counter[str] = Counter()
        self.failure_examples: list[str] = []
        self.client_errors: Counter[str] = Counter()
        self.iterations = 0

    @contextmanager
    def timed(self, op: str) -> Iterator[None]:
        """Time `op`; its latency counts only if it succeeded."""
        started = time.perf_counter()
        yield
        self.latencies[op].append(time.perf_counter() - started)

    def fail(self, op: str, why: str) -> None:
        self.failures[op] += 1
        if len(self.failure_examples) < 20:
            self.failure_examples.append(f"{op}: {why}"[:500])

    def client_error(self, kind: str) -> None:
        self.client_errors[kind] += 1

    @property
    def ops(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def stats(self) -> dict[str, OpStats]:
        out: dict[str, OpStats] = {}
        for op in sorted(self.latencies):
            ordered = sorted(self.latencies[op])
            out[op] = OpStats(
                count=len(ordered),
                p50_ms=round(percentile(ordered, 0.50) * 1000, 1),
                p95_ms=round(percentile(ordered, 0.95) * 1000, 1),
                max_ms=round(ordered[-1] * 1000, 1),
            )
        return out
