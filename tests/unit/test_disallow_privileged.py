"""`--disallow-privileged-containers`: a privileged create is refused with a 403 before anything
is recorded or built; unprivileged creates (and privileged processes in them, which run as the
container's root) are unaffected."""

from __future__ import annotations

from pathlib import Path

import pytest

from garden.cli import server as server_cli
from garden.errors import PrivilegedContainersDisallowedError
from garden.http.errors import STATUS
from tests.unit.fakes import FakeKernel
from tests.unit.test_supervisor import ORIGIN, make_config, running, spec


async def test_privileged_create_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    kernel = FakeKernel()
    config = make_config(tmp_path, disallow_privileged_containers=True)
    async with running(config, kernel) as (sup, log):
        records_before = len(list(log.records()))
        with pytest.raises(PrivilegedContainersDisallowedError, match="not allowed") as caught:
            await sup.create(spec(handle="p1", privileged=True), ORIGIN)
        assert caught.value.handle == "p1"
        assert sup.state.containers == {}
        assert len(list(log.records())) == records_before  # no intent recorded
        assert [c for c in kernel.calls if c[0] == "create"] == []
        # the handle is free and unprivileged containers are made as before
        assert await sup.create(spec(handle="p1"), ORIGIN) == "p1"


async def test_privileged_create_is_allowed_by_default(tmp_path: Path) -> None:
    async with running(make_config(tmp_path), FakeKernel()) as (sup, _):
        assert await sup.create(spec(handle="p1", privileged=True), ORIGIN) == "p1"
        assert sup.state.containers["p1"].uid_base is None


def test_status_is_403() -> None:
    assert STATUS[PrivilegedContainersDisallowedError] == 403


def test_flag_sets_the_config() -> None:
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    p = argparse.ArgumentParser()
    server_cli.configure("server", p, common)
    assert not server_cli.config_from_args(p.parse_args([])).disallow_privileged_containers
    args = p.parse_args(["--disallow-privileged-containers"])
    assert server_cli.config_from_args(args).disallow_privileged_containers
