"""The server's snapshot wiring: a snapshot at shutdown, the next start from it plus the tail,
and a damaged snapshot costing only a full replay."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from garden.config import ServerConfig
from garden.events.log import EventLog
from garden.events.snapshot import SNAPSHOT_FILE, read_snapshot
from garden.main import open_log, serve
from tests.unit.fakes import FakeKernel, FakeNetworker, FakeProcesses


def make_config(tmp_path: Path, **kw: object) -> ServerConfig:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    return ServerConfig(
        state_dir=str(tmp_path / "state"),
        default_rootfs=str(rootfs),
        bind_port=0,
        tag="gsnap",
        handle_signals=False,
        **kw,  # type: ignore[arg-type]
    )


def create(handle: str) -> tuple[str, str, dict[str, str]]:
    return ("POST", "/containers", {"handle": handle})


def set_property(handle: str, key: str) -> tuple[str, str, dict[str, str]]:
    return ("PUT", f"/containers/{handle}/properties/{key}", {"value": "v"})


async def run_server(
    config: ServerConfig, kernel: FakeKernel, *requests: tuple[str, str, dict[str, str]]
) -> None:
    """Start the server, make the requests, stop it (by cancellation, as tests do)."""
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(
                serve, config, kernel=kernel, processes=FakeProcesses(), networker=FakeNetworker()
            )
        )
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            for method, path, body in requests:
                r = await client.request(method, path, json=body)
                assert r.status_code == 200, r.text
        nursery.cancel_scope.cancel()


def log_last_seq(config: ServerConfig) -> int:
    log = EventLog.open(config.state_path / "events.log", readonly=True)
    try:
        return log.last_seq
    finally:
        log.close()


async def test_shutdown_snapshot_and_start_from_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    kernel = FakeKernel()
    await run_server(config, kernel, create("a"), create("b"), set_property("a", "k"))
    snapshot = read_snapshot(config.state_path / SNAPSHOT_FILE)
    assert snapshot is not None and snapshot.position.seq == log_last_seq(config)
    assert sorted(snapshot.containers) == ["a", "b"]
    assert snapshot.containers["a"].properties == {"k": "v"}

    restored = open_log(config)
    restored.log.close()
    assert restored.snapshot_seq == snapshot.position.seq and restored.replayed == 0

    await run_server(config, kernel, set_property("b", "k"))
    snapshot = read_snapshot(config.state_path / SNAPSHOT_FILE)
    assert snapshot is not None and snapshot.position.seq == log_last_seq(config)
    assert snapshot.containers["b"].properties == {"k": "v"}
    assert snapshot.containers["a"].phase == "active"


async def test_crash_after_the_snapshot_replays_the_tail(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    kernel = FakeKernel()
    await run_server(config, kernel, create("a"))
    snapshot_path = config.state_path / SNAPSHOT_FILE
    stale = snapshot_path.read_bytes()
    await run_server(config, kernel, create("b"))
    snapshot_path.write_bytes(stale)  # as if the server died before its shutdown snapshot
    restored = open_log(config)
    restored.log.close()
    assert restored.snapshot_seq > 0 and restored.replayed > 0
    assert sorted(restored.state.containers) == ["a", "b"]


async def test_damaged_snapshot_costs_a_full_replay_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    kernel = FakeKernel()
    await run_server(config, kernel, create("a"))
    snapshot_path = config.state_path / SNAPSHOT_FILE
    snapshot_path.write_bytes(snapshot_path.read_bytes()[:-30])
    with caplog.at_level(logging.INFO):
        await run_server(config, kernel, set_property("a", "k"))
    assert "snapshot-ignored" in caplog.text
    assert "snapshot_seq=0 " in caplog.text, "a full replay"
    snapshot = read_snapshot(snapshot_path)  # and the shutdown wrote a good one again
    assert snapshot is not None and snapshot.containers["a"].properties == {"k": "v"}


async def test_periodic_snapshots_while_serving(tmp_path: Path) -> None:
    config = make_config(tmp_path, snapshot_every=2)
    kernel = FakeKernel()
    seen: list[int] = []

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(
                serve, config, kernel=kernel, processes=FakeProcesses(), networker=FakeNetworker()
            )
        )
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            for i in range(3):
                assert (
                    await client.post("/containers", json={"handle": f"c{i}"})
                ).status_code == 200
                with trio.fail_after(10):
                    while True:  # written by a worker thread: nothing to await but the file
                        snapshot = read_snapshot(config.state_path / SNAPSHOT_FILE)
                        if snapshot is not None and len(snapshot.containers) == i + 1:
                            break
                        await trio.sleep(0.01)
                seen.append(snapshot.position.seq)
        nursery.cancel_scope.cancel()
    assert seen == sorted(seen) and len(set(seen)) == 3
