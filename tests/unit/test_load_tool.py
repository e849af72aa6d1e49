"""The arithmetic and the verdict of `just load` (bench/load), without a server."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from bench.load.run import Leaks, Options, Report, judge, parse_args
from bench.load.sampler import Sample, Sampler, fd_diff, fd_kinds, slope_per_minute
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
    assert judge(report(rss_slope_mib_per_min=3.0, window_full_s=200.0), options)
    # A short run reports its slope (mostly warm-up) but is not judged by it.
    assert judge(report(seconds=30, rss_slope_mib_per_min=30.0), options) == []
    # Nor a run whose server never filled its window of recent events (bounded growth), or
    # filled it too late to leave two minutes after.
    assert judge(report(rss_slope_mib_per_min=3.0, window_full_s=-1.0), options) == []
    assert (
        judge(report(rss_slope_mib_per_min=3.0, window_full_s=500.0, slope_from_s=500.0), options)
        == []
    )


def test_warmup_ends_when_the_event_window_is_full() -> None:
    sampler = Sampler(pid=0, every=1.0)
    # RSS grows 1 MiB per 10 s until the window is full at 300 s, then stays flat.
    sampler.samples = [
        Sample(t=float(t), rss_kib=1024 * min(t, 300) // 10, fds=10) for t in range(0, 601, 5)
    ]
    assert sampler.warmup_end(0.2) == 120.0
    assert sampler.rss_slope_mib_per_min(0.2) > 1.0  # the fill counted as growth
    assert sampler.warmup_end(0.2, not_before=300.0) == 300.0
    assert abs(sampler.rss_slope_mib_per_min(0.2, not_before=300.0)) < 0.01


def test_fd_kinds_names_what_a_process_holds(tmp_path: Path) -> None:
    before = fd_kinds(os.getpid())
    with open(tmp_path / "held", "w"), socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        grown = fd_diff(before, fd_kinds(os.getpid()))
    assert f"+1 {tmp_path / 'held'}" in grown
    assert any(g.startswith("+1 socket tcp st=0A local=0100007F:") for g in grown), grown


def test_parse_args() -> None:
    options, json_path = parse_args(["-c", "4", "-s", "30", "--json", "out.json"])
    assert (options.clients, options.seconds, json_path) == (4, 30, "out.json")
    assert parse_args(["-m", "2"])[0].seconds == 120
    with pytest.raises(SystemExit):
        parse_args(["-c", "0"])
