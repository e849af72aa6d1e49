"""The supervisor and container actors on a fake kernel and a real event log in a temp dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio

from garden.actors.ports import ContainerFiles
from garden.actors.supervisor import Supervisor
from garden.api import BindMount, ContainerSpec
from garden.config import ServerConfig
from garden.errors import (
    CapacityExhaustedError,
    ContainerNotFoundError,
    HandleInUseError,
    InvalidRequestError,
    PropertyNotFoundError,
    RuntimeFailedError,
)
from garden.events import schema as ev
from garden.events.journal import Journal
from garden.events.log import EventLog
from garden.events.state import evolve, replay
from tests.unit.fakes import FakeKernel, FakeNetworker, FakeProcesses

ORIGIN = ev.Origin(request_id="test", client="127.0.0.1")


def make_config(tmp_path: Path, **kw: object) -> ServerConfig:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    return msgspec.structs.replace(
        ServerConfig(state_dir=str(tmp_path / "state"), default_rootfs=str(rootfs), tag="gtest"),
        **kw,
    )


@asynccontextmanager
async def running(
    config: ServerConfig,
    kernel: FakeKernel,
    networker: FakeNetworker | None = None,
    files: ContainerFiles | None = None,
    processes: FakeProcesses | None = None,
) -> AsyncIterator[tuple[Supervisor, EventLog]]:
    """A supervisor on fakes and a real event log in the config's state dir."""
    if networker is None:
        networker = FakeNetworker()
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    log = EventLog.open(Path(config.state_dir) / "events.log")
    state = replay(log.records())
    journal = Journal(log, lambda r: evolve(state, r), write_in_thread=False)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            sup = Supervisor(
                config,
                state=state,
                journal=journal,
                kernel=kernel,
                processes=processes if processes is not None else FakeProcesses(),
                networker=networker,
                files=files,
            )
            await nursery.start(sup.run)
            yield sup, log
            nursery.cancel_scope.cancel()
    finally:
        log.close()


def spec(**kw: object) -> ContainerSpec:
    return msgspec.convert(kw, ContainerSpec)


async def test_create_info_properties_destroy(tmp_path: Path) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, _):
        handle = await sup.create(spec(handle="c1", properties={"a": "1"}), ORIGIN)
        assert handle == "c1"
        info = sup.info("c1")
        assert info.state == "active"
        assert info.properties == {"a": "1"}
        assert sup.handles({}) == ["c1"]
        assert sup.handles({"a": "1"}) == ["c1"]
        assert sup.handles({"a": "2"}) == []
        await sup.set_property("c1", "b", "2", ORIGIN)
        assert sup.get_property("c1", "b") == "2"
        await sup.delete_property("c1", "b", ORIGIN)
        with pytest.raises(PropertyNotFoundError):
            sup.get_property("c1", "b")
        with pytest.raises(PropertyNotFoundError):
            await sup.delete_property("c1", "b", ORIGIN)
        await sup.destroy("c1", ORIGIN)
        with pytest.raises(ContainerNotFoundError):
            sup.info("c1")
        with pytest.raises(ContainerNotFoundError):
            await sup.destroy("c1", ORIGIN)
    assert kernel.calls == [("sweep", ""), ("create", "c1"), ("destroy", "c1")]


async def test_generated_handle_and_properties_as_list(tmp_path: Path) -> None:
    async with running(make_config(tmp_path), FakeKernel()) as (sup, _):
        handle = await sup.create(spec(properties=[{"key": "k", "value": "v"}]), ORIGIN)
        assert len(handle) == 16
        assert sup.info(handle).properties == {"k": "v"}


async def test_handle_in_use_then_reusable_after_destroy(tmp_path: Path) -> None:
    async with running(make_config(tmp_path), FakeKernel()) as (sup, _):
        await sup.create(spec(handle="dup"), ORIGIN)
        with pytest.raises(HandleInUseError):
            await sup.create(spec(handle="dup"), ORIGIN)
        await sup.destroy("dup", ORIGIN)
        assert await sup.create(spec(handle="dup"), ORIGIN) == "dup"


async def test_failed_create_leaves_no_state_and_is_logged(tmp_path: Path) -> None:
    kernel = FakeKernel()
    kernel.fail_create.add("bad")
    async with running(make_config(tmp_path), kernel) as (sup, log):
        with pytest.raises(RuntimeFailedError):
            await sup.create(spec(handle="bad"), ORIGIN)
        assert sup.handles({}) == []
        assert "bad" not in sup.state.containers
        types = [type(r.event).__name__ for r in log.records()]
        assert types[-2:] == ["ContainerCreateStarted", "ContainerCreateFailed"]
        kernel.fail_create.clear()
        assert await sup.create(spec(handle="bad"), ORIGIN) == "bad"


@pytest.mark.parametrize(
    "bad",
    [
        {"handle": "no/slash"},
        {"handle": ""},
        {"env": ["NOEQUALS"]},
        {"grace_time": -1},
        {"bind_mounts": [{"src_path": "/definitely/missing", "dst_path": "/x"}]},
        {"bind_mounts": [{"src_path": "/tmp", "dst_path": "relative"}]},
        {"bind_mounts": [{"src_path": "/tmp", "dst_path": "/a/../../b"}]},
        {"rootfs": "/definitely/missing/rootfs"},
        {"network": "nonsense"},
        {"network": "10.254.1.0/24"},  # overlaps the dynamic pool
        {"network": "10.0.0.0/31"},  # no room for the host side
        {"network": "10.0.0.3/30"},  # the broadcast address
        {"network": "10.0.0.2/30"},  # the host side
        {"limits": {"bandwidth": {"rate": 1000, "burst": 10}}},  # burst below one frame
        {"limits": {"memory": {"limit_in_bytes": 1000}}},  # below the smallest memory limit
        {"limits": {"cpu": {"limit_in_shares": 1}}},
        {"limits": {"pids": {"max": -1}}},
        {"limits": {"disk": {"byte_hard": -1}}},
    ],
)
async def test_bad_spec_is_rejected_before_anything_is_recorded(
    tmp_path: Path, bad: dict[str, object]
) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        before = log.last_seq
        with pytest.raises(InvalidRequestError):
            await sup.create(spec(**bad), ORIGIN)
        assert log.last_seq == before
        assert [c for c in kernel.calls if c[0] != "sweep"] == []


async def test_bind_mount_source_in_state_dir_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config, FakeKernel()) as (sup, _):
        with pytest.raises(InvalidRequestError, match="expose"):
            await sup.create(
                spec(bind_mounts=[{"src_path": config.state_dir, "dst_path": "/s"}]), ORIGIN
            )
        # A parent of the state dir would show it too.
        with pytest.raises(InvalidRequestError, match="expose"):
            await sup.create(
                spec(bind_mounts=[BindMount(src_path=str(tmp_path), dst_path="/s")]), ORIGIN
            )
        beside = tmp_path / "beside"
        beside.mkdir()
        handle = await sup.create(
            spec(bind_mounts=[BindMount(src_path=str(beside), dst_path="/s")]), ORIGIN
        )
        assert sup.info(handle).state == "active"


async def test_max_containers(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, max_containers=2), FakeKernel()) as (sup, _):
        await sup.create(spec(), ORIGIN)
        await sup.create(spec(), ORIGIN)
        assert sup.capacity().max_containers == 0
        with pytest.raises(CapacityExhaustedError):
            await sup.create(spec(), ORIGIN)


async def test_replay_reproduces_live_state(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config, FakeKernel()) as (sup, log):
        for i in range(5):
            await sup.create(spec(handle=f"h{i}", properties={"i": str(i)}), ORIGIN)
        await sup.set_property("h1", "x", "y", ORIGIN)
        await sup.set_grace_time("h2", 30, ORIGIN)
        await sup.stop("h3", True, ORIGIN)
        await sup.destroy("h4", ORIGIN)
        live = dict(sup.state.containers)
        replayed = replay(log.records()).containers
    assert replayed == live
    assert replayed["h3"].phase == "stopped"
    assert replayed["h2"].grace_time == 30
    assert "h4" not in replayed


async def test_init_exit_marks_container_stopped(tmp_path: Path) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, _):
        await sup.create(spec(handle="c"), ORIGIN)
        kernel.crash_init(sup.state.containers["c"].container_id)
        await wait_until(lambda: sup.info("c").state == "stopped")
        await sup.destroy("c", ORIGIN)


async def test_recovery_after_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    kernel = FakeKernel()
    async with running(config, kernel) as (sup, _):
        await sup.create(spec(handle="alive", properties={"p": "1"}), ORIGIN)
        await sup.create(spec(handle="dies"), ORIGIN)
        await sup.create(spec(handle="stopped"), ORIGIN)
        await sup.stop("stopped", False, ORIGIN)
        dies_id = sup.state.containers["dies"].container_id
    # While the server is down the init of "dies" exits; and a create was interrupted.
    kernel.live.pop(dies_id)
    log = EventLog.open(Path(config.state_dir) / "events.log")
    spec_ = spec(handle="half")
    log.append(
        [
            (
                ev.ContainerCreateStarted(
                    handle="half",
                    container_id="feed",
                    spec=spec_,
                    rootfs="/",
                    container_path="/nonexistent",
                    cgroup_path="/gtest/feed",
                    uid_base=None,
                    grace_time=0,
                    env=[],
                ),
                ev.Origin(),
            )
        ],
        now=0.0,
    )
    log.close()
    kernel.calls.clear()
    async with running(config, kernel) as (sup, log):
        assert sorted(sup.handles({})) == ["alive", "dies", "stopped"]
        assert sup.info("alive").state == "active"
        assert sup.info("alive").properties == {"p": "1"}
        assert sup.info("dies").state == "stopped"
        assert sup.info("stopped").state == "stopped"
        assert ("destroy", "half") in kernel.calls
        with pytest.raises(HandleInUseError):
            await sup.create(spec(handle="alive"), ORIGIN)
        await sup.destroy("dies", ORIGIN)


async def test_grace_time_reaps_untouched_container(tmp_path: Path, autojump_clock: object) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, _):
        await sup.create(spec(handle="short", grace_time=5), ORIGIN)
        await sup.create(spec(handle="forever"), ORIGIN)
        await trio.sleep(3)
        sup.info("short")  # a request naming it restarts its clock
        await trio.sleep(3)
        assert "short" in sup.handles({})
        await trio.sleep(3)
        assert sup.handles({}) == ["forever"]
        assert ("destroy", "short") in kernel.calls


async def test_grace_time_hold_and_change(tmp_path: Path, autojump_clock: object) -> None:
    async with running(make_config(tmp_path, default_grace_time=2), FakeKernel()) as (sup, _):
        await sup.create(spec(handle="held"), ORIGIN)
        await sup.create(spec(handle="changed"), ORIGIN)
        await sup.set_grace_time("changed", 0, ORIGIN)
        with sup.reaper.hold("held"):
            await trio.sleep(10)
            assert sorted(sup.handles({})) == ["changed", "held"]
        await trio.sleep(1)
        assert "held" in sup.handles({})
        await trio.sleep(2)
        assert sup.handles({}) == ["changed"]


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.001)


async def test_recovery_of_many_containers_shares_fsyncs(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    kernel = FakeKernel()
    async with running(config, kernel) as (sup, _):
        for i in range(40):
            await sup.create(spec(handle=f"c{i}"), ORIGIN)
    async with running(config, kernel) as (sup, _):
        assert all(sup.info(f"c{i}").state == "active" for i in range(40))
        stats = sup.journal.stats()
        assert stats.records == 40, "one ContainerRestored each"
        assert stats.batches <= 4, "recovered side by side, their records group-committed"
