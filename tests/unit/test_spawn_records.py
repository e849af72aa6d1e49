"""The records of a spawn: ProcessSpawning is written while the runtime starts the process
(the id is durable before it is answered), ProcessStarted with the pids after it, unwaited,
ProcessExited last; a failed spawn says so (ProcessSpawnFailed), and a start-up settles a
spawn a crash left unsettled from what the process left behind."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from garden.api import ProcessSpec
from garden.errors import RuntimeFailedError
from garden.events import schema as ev
from garden.events.log import EventLog
from garden.linux.plan import SpawnedProcess
from tests.unit.fakes import FakeKernel, FakeProcesses
from tests.unit.test_supervisor import ORIGIN, make_config, running, spec


def process_records(log: EventLog) -> list[ev.Record]:
    return [r for r in log.records() if type(r.event).__name__.startswith("Process")]


def process_events(log: EventLog) -> list[ev.Event]:
    return [r.event for r in process_records(log)]


async def test_a_run_records_spawning_started_exited_in_order(tmp_path: Path) -> None:
    kernel, processes = FakeKernel(), FakeProcesses()
    async with running(make_config(tmp_path), kernel, processes=processes) as (sup, log):
        await sup.create(spec(handle="c"), ORIGIN)
        process = await sup.run_process("c", ProcessSpec(path="sh", args=["-c", "x"]), ORIGIN)
        [facts] = processes.spawned.values()
        processes.finish(facts, 0)
        assert await process.wait() == 0
        spawning, started, exited = process_events(log)
    assert isinstance(spawning, ev.ProcessSpawning)
    assert isinstance(started, ev.ProcessStarted)
    assert isinstance(exited, ev.ProcessExited)
    assert spawning.facts == msgspec.structs.replace(
        facts, pid=0, pid_start_time=None, conmon_pid=0, conmon_start_time=None
    )
    assert not spawning.facts.pids_known
    assert spawning.args == started.args == ["sh", "-c", "x"]
    assert started.facts == facts
    assert (exited.process_id, exited.exit_status) == (process.process_id, 0)


async def test_a_failed_spawn_is_recorded_and_frees_its_id(tmp_path: Path) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        await sup.create(spec(handle="c"), ORIGIN)
        with pytest.raises(RuntimeFailedError):
            await sup.run_process("c", ProcessSpec(id="p", path="/runtime-fails"), ORIGIN)
        spawning, failed = process_events(log)
        assert isinstance(spawning, ev.ProcessSpawning)
        assert isinstance(failed, ev.ProcessSpawnFailed)
        assert failed.process_id == "p" and "the runtime said no" in failed.reason
        # Regression: the failure was recorded without the request that caused it.
        assert [r.origin for r in process_records(log)] == [ORIGIN, ORIGIN]
        assert sup.state.containers["c"].processes == {}
        assert sup.info("c").process_ids == []
        again = await sup.run_process("c", ProcessSpec(id="p", path="true"), ORIGIN)
        assert again.process_id == "p"


def _announce_only(state_dir: str, handle: str, process_dir: str) -> SpawnedProcess:
    """What a server SIGKILLed between ProcessSpawning and ProcessStarted leaves in its log;
    the facts announced."""
    planned = SpawnedProcess(
        container_id="c-id", process_dir=process_dir, socket_link="", pid=0,
        pid_start_time=None, conmon_pid=0, conmon_start_time=None, tty=False, stdin=False,
    )  # fmt: skip
    log = EventLog.open(Path(state_dir) / "events.log")
    spawning = ev.ProcessSpawning(handle=handle, process_id="p", facts=planned, args=["true"])
    log.append([(spawning, ev.Origin())], now=0.0)
    log.close()
    return planned


async def test_a_start_settles_a_spawn_that_ran(tmp_path: Path) -> None:
    config, kernel, processes = make_config(tmp_path), FakeKernel(), FakeProcesses()
    async with running(config, kernel, processes=processes) as (sup, _):
        await sup.create(spec(handle="c"), ORIGIN)
    planned = _announce_only(config.state_dir, "c", "/fake/ran")
    # Its pid files say it ran: the fake's find_announced returns these facts.
    ran = msgspec.structs.replace(planned, pid=4242, pid_start_time=9, conmon_pid=4241)
    processes.spawned[planned.process_dir] = ran
    async with running(config, kernel, processes=processes) as (sup, log):
        settled = sup.process("c", "p")
        assert settled.running and settled.facts == ran
        started = process_events(log)[-1]
        assert isinstance(started, ev.ProcessStarted)
        assert (started.process_id, started.facts) == ("p", ran)
        assert sup.state.containers["c"].processes["p"].facts == ran
        processes.finish(ran, 7)
        assert await settled.wait() == 7


async def test_a_start_settles_a_spawn_that_never_ran(tmp_path: Path) -> None:
    config, kernel = make_config(tmp_path), FakeKernel()
    async with running(config, kernel) as (sup, _):
        await sup.create(spec(handle="c"), ORIGIN)
    _announce_only(config.state_dir, "c", "/fake/never")
    async with running(config, kernel) as (sup, log):  # a FakeProcesses that spawned nothing
        failed = process_events(log)[-1]
        assert isinstance(failed, ev.ProcessSpawnFailed) and failed.process_id == "p"
        assert sup.state.containers["c"].processes == {}
        assert sup.info("c").process_ids == []
