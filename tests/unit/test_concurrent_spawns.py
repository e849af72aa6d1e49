"""Spawns run side by side in a container actor: neither other spawns nor other commands wait
behind one, a duplicate id of a spawn in flight is refused, and stop/destroy wait for them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from garden.actors.supervisor import Supervisor
from garden.api import ContainerSpec, ProcessSpec
from garden.errors import ContainerNotFoundError, ProcessIdInUseError
from garden.linux.plan import ContainerPlan, SpawnedProcess, Started
from tests.unit.fakes import FakeKernel, FakeProcesses
from tests.unit.test_supervisor import ORIGIN, make_config, running


class Gate:
    """Holds every spawn of the fake process kernel until `open` is set."""

    def __init__(self, processes: FakeProcesses) -> None:
        self.open = trio.Event()
        self.waiting = 0
        self.entered = trio.Event()
        self._spawn = processes.spawn

        async def spawn(
            plan: ContainerPlan,
            started: Started,
            spec: ProcessSpec,
            process_id: str,
            *,
            container_env: list[str],
            privileged_container: bool,
            announce: Callable[[SpawnedProcess], object] | None = None,
        ) -> SpawnedProcess:
            self.waiting += 1
            self.entered.set()
            await self.open.wait()
            return await self._spawn(
                plan,
                started,
                spec,
                process_id,
                container_env=container_env,
                privileged_container=privileged_container,
                announce=announce,
            )

        setattr(processes, "spawn", spawn)  # noqa: B010 (an instance attribute over the method)


def process(process_id: str) -> ProcessSpec:
    return msgspec.convert({"path": "true", "id": process_id}, ProcessSpec)


def fake_processes(sup: Supervisor) -> FakeProcesses:
    processes = sup.process_kernel
    assert isinstance(processes, FakeProcesses)
    return processes


async def test_spawns_overlap_and_other_commands_pass(tmp_path: Path) -> None:
    async with running(make_config(tmp_path), FakeKernel()) as (sup, _):
        await sup.create(msgspec.convert({"handle": "c"}, ContainerSpec), ORIGIN)
        gate = Gate(fake_processes(sup))
        ids: list[str] = []

        async def run(process_id: str) -> None:
            ids.append((await sup.run_process("c", process(process_id), ORIGIN)).process_id)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(run, f"p{i}")
            await trio.testing.wait_all_tasks_blocked()
            assert gate.waiting == 5  # all five are in their spawn at once
            await sup.set_property("c", "k", "v", ORIGIN)  # not queued behind them
            assert sup.get_property("c", "k") == "v"
            with pytest.raises(ProcessIdInUseError):
                await sup.run_process("c", process("p3"), ORIGIN)
            gate.open.set()
        assert sorted(ids) == [f"p{i}" for i in range(5)]
        state = sup.state.containers["c"]
        assert sorted(state.processes) == sorted(ids)
        assert sorted(sup.info("c").process_ids) == sorted(ids)


async def test_destroy_waits_for_spawns_in_flight(tmp_path: Path) -> None:
    async with running(make_config(tmp_path), FakeKernel()) as (sup, _):
        await sup.create(msgspec.convert({"handle": "c"}, ContainerSpec), ORIGIN)
        processes = fake_processes(sup)
        gate = Gate(processes)
        got: list[str] = []

        async def run() -> None:
            got.append((await sup.run_process("c", process("late"), ORIGIN)).process_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await gate.entered.wait()
            nursery.start_soon(sup.destroy, "c", ORIGIN)
            await trio.testing.wait_all_tasks_blocked()
            assert "c" in sup.state.containers  # the destroy waits for the spawn
            gate.open.set()
        assert got == ["late"]  # the spawn finished and was answered,
        (facts,) = processes.spawned.values()
        assert processes.cleaned == [facts.process_dir]  # then the destroy removed it
        with pytest.raises(ContainerNotFoundError):
            sup.info("c")
