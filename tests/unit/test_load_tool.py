"""The arithmetic and the verdict of `just load` (bench/load), without a server."""

from __future__ import annotations

import pytest

from bench.load.run import Leaks, Options, Report, judge, parse_args
from bench.load.sampler import slope_per_minute
from bench.load.tally import Tally, percentile


def test_slope_per_minute() -> None:
    assert slope_per_minute([(0, 10), (30, 11), (60, 12)]) == pytest.approx(2.0)
    assert slope_per_minute([(0, 5), (60, 5), (120, 5)]) == 0
    assert slope_per_minute([(0, 5)]) == 0


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(x) for x in range(1, 101)]
    assert percentile(ordered, 0.5) == 50
    assert percentile(ordered, 0.95) == 95
    assert percentile([], 0.5) == 0


def test_failed_step_is_not_timed() -> None:
    tally = Tally()
    with tally.timed("ok"):
        pass
    with pytest.raises(RuntimeError), tally.timed("bad"):
        raise RuntimeError
    assert list(tally.latencies) == ["ok"]


def report(**kw: object) -> Report:
    values: dict[str, object] = dict(
        clients=1, seconds=600, iterations=10, ops=100, failures={}, failure_examples=[],
        client_errors={}, latencies={}, fds_idle_start=10, fds_idle_end=12,
        leaks=Leaks(checked=True, found=[], containers_left=[]),
    )  # fmt: skip
    values.update(kw)
    return Report(**values)  # type: ignore[arg-type]


def test_judge() -> None:
    options = Options()
    assert judge(report(), options) == []
    assert judge(report(failures={"run-seq": 1}), options)
    assert judge(report(leaks=Leaks(checked=True, found=["link x"], containers_left=[])), options)
    assert judge(report(fds_idle_end=40), options)
    assert judge(report(rss_slope_mib_per_min=3.0), options)
    # A short run reports its slope (mostly warm-up) but is not judged by it.
    assert judge(report(seconds=30, rss_slope_mib_per_min=30.0), options) == []


def test_parse_args() -> None:
    options, json_path = parse_args(["-c", "4", "-s", "30", "--json", "out.json"])
    assert (options.clients, options.seconds, json_path) == (4, 30, "out.json")
    assert parse_args(["-m", "2"])[0].seconds == 120
    with pytest.raises(SystemExit):
        parse_args(["-c", "0"])
