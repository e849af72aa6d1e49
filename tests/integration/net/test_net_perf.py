"""What networking costs (printed; run with `-s -m slow`): create and destroy through the API
with and without networking, the network set-up and teardown on their own, and 250 containers
with an address and a net-in mapping each, created and destroyed with nothing left.

The bars of the networking issue (set-up adds at most 20 ms to a create's median, teardown at
most 20 ms to a destroy's) are reported, not asserted: this machine is shared and noisy. The
assertions are loose sanity bounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import trio

from garden.linux.plan import (
    Bandwidth,
    ContainerPlan,
    FirewallRule,
    LiveNetwork,
    NetWiring,
    PortMap,
    Started,
)
from garden.main import build_networker, serve
from tests.integration.conftest import force_cleanup, leftovers, make_config, needs_root

pytestmark = [pytest.mark.root, pytest.mark.slow]

T = TypeVar("T")


class Timed:
    """Wraps a networker (or nothing: no networking at all) and times its calls."""

    def __init__(self, inner: object | None) -> None:
        self.inner = inner
        self.times: dict[str, list[float]] = {}

    async def _timed(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        t = time.perf_counter()
        try:
            return await call()
        finally:
            self.times.setdefault(name, []).append(time.perf_counter() - t)

    async def restore(self, live: Sequence[LiveNetwork]) -> list[str]:
        if self.inner is None:
            return []
        return await self.inner.restore(live)  # type: ignore[attr-defined,no-any-return]

    async def setup(self, plan: ContainerPlan, started: Started, wiring: NetWiring) -> None:
        if self.inner is not None:
            await self._timed("setup", lambda: self.inner.setup(plan, started, wiring))  # type: ignore[union-attr]

    async def teardown(self, plan: ContainerPlan, wiring: NetWiring) -> None:
        if self.inner is not None:
            await self._timed("teardown", lambda: self.inner.teardown(plan, wiring))  # type: ignore[union-attr]

    async def map_port(self, plan: ContainerPlan, mapping: PortMap) -> None:
        if self.inner is not None:
            await self._timed("map_port", lambda: self.inner.map_port(plan, mapping))  # type: ignore[union-attr]

    async def unmap_port(self, plan: ContainerPlan, mapping: PortMap) -> None:
        if self.inner is not None:
            await self.inner.unmap_port(plan, mapping)  # type: ignore[attr-defined]

    async def allow_out(self, plan: ContainerPlan, rule: FirewallRule) -> None:
        if self.inner is not None:
            await self.inner.allow_out(plan, rule)  # type: ignore[attr-defined]

    async def limit_bandwidth(
        self, plan: ContainerPlan, current: Bandwidth | None, new: Bandwidth | None
    ) -> None:
        if self.inner is not None:
            await self.inner.limit_bandwidth(plan, current, new)  # type: ignore[attr-defined]

    def stats(self, plan: ContainerPlan, wiring: NetWiring) -> dict[str, int]:
        return {} if self.inner is None else self.inner.stats(plan, wiring)  # type: ignore[attr-defined,no-any-return]


def ms(samples: list[float]) -> str:
    if not samples:
        return "-"
    s = sorted(samples)
    return f"median {statistics.median(s) * 1000:.1f} ms, p90 {s[int(len(s) * 0.9)] * 1000:.1f} ms"


async def cycle(
    c: httpx.AsyncClient, n: int, *, net_in: bool = False
) -> tuple[list[float], list[float]]:
    creates, destroys = [], []
    for i in range(n):
        t = time.perf_counter()
        r = await c.post("/containers", json={"handle": f"p{i}"})
        creates.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
        if net_in:
            assert (await c.post(f"/containers/p{i}/net/in", json={})).status_code == 200
        t = time.perf_counter()
        assert (await c.delete(f"/containers/p{i}")).status_code == 200
        destroys.append(time.perf_counter() - t)
    return creates, destroys


@pytest.mark.parametrize("n", [30])
async def test_cost_of_networking(state_dir: Path, n: int) -> None:
    needs_root()
    results = {}
    for label, with_net in (("without network", False), ("with network", True),
                            ("without network ", False), ("with network ", True)):  # fmt: skip
        sd = state_dir / label.strip().replace(" ", "-") / str(len(results))
        config = make_config(sd)
        timed = Timed(build_networker(config) if with_net else None)
        try:
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(
                    lambda task_status, cfg=config, tm=timed: serve(  # type: ignore[misc]
                        cfg, networker=tm, task_status=task_status
                    )
                )
                async with httpx.AsyncClient(base_url=binds[0], timeout=120) as c:
                    await cycle(c, 3)  # warm up (lower-layer cache, imports)
                    creates, destroys = await cycle(c, n)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await force_cleanup(config)
        results[label] = (creates, destroys, timed.times)
    print()
    for label, (creates, destroys, times) in results.items():
        print(f"{label:17s} create {ms(creates)} | destroy {ms(destroys)}")
        if times:
            print(f"{'':17s} setup {ms(times['setup'])} | teardown {ms(times['teardown'])}")
    for creates, destroys, _ in results.values():
        assert statistics.median(creates) < 2.0
        assert statistics.median(destroys) < 2.0


async def test_250_containers_with_net_in(state_dir: Path) -> None:
    needs_root()
    n = 250
    config = make_config(state_dir, port_pool_size=n)
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(lambda task_status: serve(config, task_status=task_status))
            async with httpx.AsyncClient(base_url=binds[0], timeout=120) as c:
                t0 = time.perf_counter()
                for i in range(n):
                    # Privileged: runc gives each container a session keyring, and every
                    # unprivileged one's is charged to the same host uid, whose quota
                    # (kernel.keys.maxkeys, 200 here) 250 would exceed. The networking is
                    # the same.
                    r = await c.post("/containers", json={"handle": f"m{i}", "privileged": True})
                    assert r.status_code == 200, r.text
                    r = await c.post(f"/containers/m{i}/net/in", json={})
                    assert r.status_code == 200, r.text
                t1 = time.perf_counter()
                ips = {(await c.get(f"/containers/m{i}/info")).json()["container_ip"]
                       for i in range(n)}  # fmt: skip
                assert len(ips) == n
                for i in range(n):
                    assert (await c.delete(f"/containers/m{i}")).status_code == 200
                t2 = time.perf_counter()
            nursery.cancel_scope.cancel()
        t3 = time.perf_counter()
        left = await trio.to_thread.run_sync(leftovers, config, 30.0)
        t4 = time.perf_counter()
        print(
            f"\n{n} containers with an address and a net-in mapping each: created in "
            f"{t1 - t0:.1f} s, destroyed in {t2 - t1:.1f} s; their veths gone "
            f"{t4 - t3:.2f} s after the last destroy; left: {left}"
        )
        assert left == []
    finally:
        with trio.CancelScope(shield=True):
            await force_cleanup(config)
