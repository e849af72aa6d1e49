"""A short `just load` in the suite: 4 clients for 30 s against a server process of its own,
with every byte checked, errors counted and the leak check at the end (bench/load)."""

from __future__ import annotations

import pytest

from bench.load.run import Options, render, run
from tests.integration.conftest import needs_root

pytestmark = [pytest.mark.root, pytest.mark.slow]


async def test_short_load_run_has_no_failures_and_leaks_nothing() -> None:
    needs_root()
    report = await run(Options(clients=4, seconds=30, sample_every=1.0))
    assert report.ok, render(report)
    assert report.iterations >= 4, render(report)
    assert report.leaks.checked
    # Every bad-on-purpose request got its 4xx (a wrong answer would be a failure above).
    assert sum(report.client_errors.values()) == report.iterations
    assert report.samples, "the server's RSS and fds were sampled"
