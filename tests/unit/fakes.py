"""Fakes for unit tests of the actors: a kernel that records calls instead of making
containers."""

from __future__ import annotations

import itertools
from typing import final

import trio

from garden.actors.ports import Liveness
from garden.errors import RuntimeFailedError
from garden.linux.plan import ContainerPlan, Started


@final
class FakeKernel:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.live: dict[str, Started] = {}
        self.fail_create: set[str] = set()
        self.stopped_inits: dict[int, trio.Event] = {}
        self._pids = itertools.count(1000)

    async def create(self, plan: ContainerPlan) -> Started:
        self.calls.append(("create", plan.handle))
        await trio.lowlevel.checkpoint()
        if plan.handle in self.fail_create:
            raise RuntimeFailedError("runc create", "boom", handle=plan.handle)
        started = Started(pid=next(self._pids), pid_start_time=42)
        self.live[plan.container_id] = started
        self.stopped_inits[started.pid] = trio.Event()
        return started

    async def destroy(self, plan: ContainerPlan) -> None:
        self.calls.append(("destroy", plan.handle))
        await trio.lowlevel.checkpoint()
        started = self.live.pop(plan.container_id, None)
        if started is not None:
            self.stopped_inits[started.pid].set()

    async def stop(self, plan: ContainerPlan, *, kill: bool, timeout: float) -> None:
        self.calls.append(("stop-kill" if kill else "stop", plan.handle))
        await trio.lowlevel.checkpoint()

    async def probe(self, plan: ContainerPlan, started: Started | None) -> Liveness:
        self.calls.append(("probe", plan.handle))
        live = self.live.get(plan.container_id)
        if live is not None and started == live:
            return "running"
        return "gone"

    async def wait_exit(self, started: Started) -> None:
        event = self.stopped_inits.setdefault(started.pid, trio.Event())
        await event.wait()

    async def sweep(self, owned: set[str]) -> list[str]:
        self.calls.append(("sweep", ",".join(sorted(owned))))
        await trio.lowlevel.checkpoint()
        orphans = sorted(set(self.live) - owned)
        for container_id in orphans:
            del self.live[container_id]
        return orphans

    def crash_init(self, container_id: str) -> None:
        """The container's init dies on its own."""
        started = self.live.pop(container_id)
        self.stopped_inits[started.pid].set()
