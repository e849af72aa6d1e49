"""What the actors need from the kernel side, declared here where it is consumed.

`garden/linux/containers.py` implements `ContainerKernel` for real; `tests/unit/fakes.py` has a
fake that records calls. Actors never import `garden.linux` modules other than the plain data
types of `garden.linux.plan`.
"""

from __future__ import annotations

from typing import Literal, Protocol

from garden.linux.plan import ContainerPlan, Started

Liveness = Literal["running", "stopped", "gone"]


class ContainerKernel(Protocol):
    async def create(self, plan: ContainerPlan) -> Started:
        """Build and start the container. On failure everything taken is released before
        the error propagates."""
        ...

    async def destroy(self, plan: ContainerPlan) -> None:
        """Kill every process and release every resource of the plan. Idempotent: what is
        already gone counts as done; safe to call for a half-created container."""
        ...

    async def stop(self, plan: ContainerPlan, *, kill: bool, timeout: float) -> None:
        """Signal every process (TERM, then KILL after `timeout`; KILL at once with `kill`)
        and return once all are gone; the rootfs stays."""
        ...

    async def probe(self, plan: ContainerPlan, started: Started | None) -> Liveness:
        """After a restart: is the container's init still the process that was started?"""
        ...

    async def wait_exit(self, started: Started) -> None:
        """Return when the container's init exits (pidfd, no polling)."""
        ...

    async def sweep(self, owned: set[str]) -> list[str]:
        """Release every kernel resource under our names whose container id is not in `owned`
        (left by a crash); return the ids released."""
        ...
