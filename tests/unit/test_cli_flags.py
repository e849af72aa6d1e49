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


def test_registry_flags_reach_the_config() -> None:
    from garden.cli import build_parser
    from garden.cli.server import config_from_args
    from garden.main import registries_of

    argv = ["server", "--docker-registry", "127.0.0.1:5000", "--registry-timeout", "2.5"]
    argv += ["--insecure-docker-registry", "127.0.0.1:5000", "--insecure-docker-registry", "r"]
    config = config_from_args(build_parser("server").parse_args(argv))
    assert config.insecure_docker_registries == ("127.0.0.1:5000", "r")
    registries = registries_of(config)
    assert registries.options.default == "127.0.0.1:5000"
    assert registries.options.timeout == 2.5
    assert registries.url("127.0.0.1:5000", "/v2/") == "http://127.0.0.1:5000/v2/"
    defaults = config_from_args(build_parser("server").parse_args(["server"]))
    assert (
        registries_of(defaults)
        .url(defaults.docker_registry, "/v2/")
        .startswith("https://registry-1.docker.io/")
    )
