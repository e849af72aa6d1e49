"""Summaries of timing samples (median, p90, min, max) and the interleaving of engines, so
that the machine's drift over a run falls on every engine alike."""

from __future__ import annotations

import math
import statistics
from collections.abc import Awaitable, Callable, Sequence

import msgspec


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    n: int
    median: float
    p90: float
    min: float
    max: float


def summarise(samples: Sequence[float]) -> Summary:
    """Median, p90 (nearest rank), min and max of `samples` (at least one)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(0.9 * len(ordered)))
    return Summary(
        n=len(ordered),
        median=statistics.median(ordered),
        p90=ordered[rank - 1],
        min=ordered[0],
        max=ordered[-1],
    )


# One measurement: named parts in seconds (or a rate), "total" being the one the table shows.
Parts = dict[str, float]
Op = Callable[[], Awaitable[Parts]]


def rotation(names: Sequence[str], round_no: int) -> list[str]:
    """`names` rotated by `round_no`: each engine goes first, second, ... equally often."""
    if not names:
        return []
    k = round_no % len(names)
    return [*names[k:], *names[:k]]


def describe(exc: BaseException) -> str:
    """An error for the table: a group of them says how many and what the first one was."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        text += f"; the first: {describe(exc.exceptions[0])}"
    return text


async def interleave(
    ops: dict[str, Op], *, rounds: int, warmup: int
) -> tuple[dict[str, list[Parts]], dict[str, str]]:
    """Run every op once per round, in a rotating order, dropping the first `warmup` rounds.
    An op that raises is reported (name -> error) and left out of the rounds after."""
    samples: dict[str, list[Parts]] = {name: [] for name in ops}
    failed: dict[str, str] = {}
    for round_no in range(warmup + rounds):
        for name in rotation([n for n in ops if n not in failed], round_no):
            try:
                parts = await ops[name]()
            except Exception as exc:
                failed[name] = describe(exc)[:500]
                continue
            if round_no >= warmup:
                samples[name].append(parts)
    return samples, failed


def column(samples: Sequence[Parts], key: str = "total") -> list[float]:
    return [s[key] for s in samples if key in s]
