"""Servers for the tests of the client and the CLI, both over real sockets on 127.0.0.1:

- `real`: the garden server itself (`garden.main.serve`) on the fake kernel and fake processes,
  for every route it serves;
- `fake`: `FakeGarden`, a small ASGI app that answers the routes of API.md still being built on
  other branches (files, limits, net, bulk_info, metrics, stdin), recording each request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import final

import hypercorn.trio
import pytest
import trio
from hypercorn.config import Config

from garden.config import ServerConfig
from garden.main import serve
from tests.unit.client.fake_garden import FakeGarden
from tests.unit.fakes import FakeKernel, FakeNetworker, FakeProcesses


@final
class Real:
    def __init__(self, url: str, processes: FakeProcesses, config: ServerConfig) -> None:
        self.url = url
        self.processes = processes
        self.config = config

    def finish_all(self, status: int) -> None:
        """Make every running fake process exit with `status`."""
        for facts in self.processes.spawned.values():
            if not self.processes.exits[facts.process_dir].is_set():
                self.processes.finish(facts, status)


async def start_real(tmp_path: Path, nursery: trio.Nursery, socket: str | None = None) -> Real:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    config = ServerConfig(
        state_dir=str(tmp_path / "state"),
        default_rootfs=str(rootfs),
        bind_port=0,
        bind_socket=socket,
        tag="gtest",
        handle_signals=False,
    )
    processes = FakeProcesses()
    binds = await nursery.start(
        partial(serve, config, kernel=FakeKernel(), processes=processes, networker=FakeNetworker())
    )
    return Real(binds[0], processes, config)


@pytest.fixture
async def real(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Real]:
    yield await start_real(tmp_path, nursery)
    nursery.cancel_scope.cancel()


@pytest.fixture
async def real_unix(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Real]:
    """The real server on a unix socket only (its `url` is hypercorn's name for it)."""
    yield await start_real(tmp_path, nursery, socket=str(tmp_path / "garden.sock"))
    nursery.cancel_scope.cancel()


@final
class Fake:
    def __init__(self, url: str, app: FakeGarden) -> None:
        self.url = url
        self.app = app


@pytest.fixture
async def fake(nursery: trio.Nursery) -> AsyncIterator[Fake]:
    app = FakeGarden()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    shutdown = trio.Event()
    binds = await nursery.start(
        partial(hypercorn.trio.serve, app, config, shutdown_trigger=shutdown.wait)
    )
    yield Fake(binds[0], app)
    shutdown.set()
