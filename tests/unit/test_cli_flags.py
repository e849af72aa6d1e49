"""`garden server` flags: bad values fail at start with a message naming the flag."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "garden.cli", "server", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--no-such-flag"], "--no-such-flag"),
        (["--bind-port", "seventy"], "--bind-port"),
        (["--bind-port", "70000"], "--bind-port"),
        (["--bind-ip", "localhost:1"], "--bind-ip"),
        (["--network-pool", "10.0.0.0/33"], "--network-pool"),
        (["--network-pool", "10.0.0.1/24"], "--network-pool"),
        (["--deny-network", "nonsense"], "--deny-network"),
        (["--port-pool-start", "65000", "--port-pool-size", "1000"], "--port-pool"),
        (["--default-grace-time", "-1"], "--default-grace-time"),
        (["--runtime", "docker"], "--runtime"),
        (["--tag", "Bad-Tag"], "--tag"),
        (["--max-containers", "-3"], "--max-containers"),
        (["--insecure-docker-registry", "http://r:5000"], "--insecure-docker-registry"),
        (["--docker-registry", "r/x"], "--docker-registry"),
        (["--registry-timeout", "0"], "--registry-timeout"),
    ],
)
def test_bad_flags_fail_at_start(args: list[str], named: str) -> None:
    result = run_server(*args)
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr
