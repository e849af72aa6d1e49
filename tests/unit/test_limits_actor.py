"""Limits through the supervisor and the container actor on the fake kernel: create-time
limits recorded as the kernel holds them, PUT semantics, the disk rules, the OOM stop, and the
same state after replay and after a restart."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from garden.api import Limits
from garden.errors import ConflictError, InvalidRequestError
from garden.events import schema as ev
from garden.events.state import replay
from tests.unit.fakes import FakeKernel
from tests.unit.test_supervisor import ORIGIN, make_config, running, spec, wait_until


def limits(**kw: object) -> Limits:
    return msgspec.convert(kw, Limits)


async def test_create_time_limits_are_recorded_as_the_kernel_holds_them(tmp_path: Path) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        mem = {"limit_in_bytes": 100_000_000}
        await sup.create(spec(handle="c", limits={"memory": mem, "pids": {"max": 5}}), ORIGIN)
        c = sup.state.containers["c"]
        assert c.limits.memory is not None
        assert c.limits.memory.limit_in_bytes == 99_999_744  # page-rounded
        assert c.plan().resources.pids_max == 5
        assert c.plan().disk is None
        events = [r.event for r in log.records()]
        created = next(i for i, e in enumerate(events) if isinstance(e, ev.ContainerCreated))
        assert isinstance(events[created + 1], ev.LimitsSet)


async def test_put_changes_only_what_it_gives_and_replays(tmp_path: Path) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        await sup.create(spec(handle="c"), ORIGIN)
        out = await sup.set_limits("c", limits(memory={"limit_in_bytes": 64 << 20}), ORIGIN)
        assert out.memory is not None and out.memory.limit_in_bytes == 64 << 20
        before = log.last_seq
        same = await sup.set_limits("c", limits(memory={}), ORIGIN)
        assert same == out
        assert log.last_seq == before  # nothing changed, nothing recorded
        out = await sup.set_limits("c", limits(cpu={"limit_in_shares": 0}), ORIGIN)
        assert out.cpu is not None and out.cpu.limit_in_shares == 1024  # the kernel's default
        assert out.memory == same.memory
        with pytest.raises(InvalidRequestError):
            await sup.set_limits("c", limits(pids={"max": -3}), ORIGIN)
        live = dict(sup.state.containers)
        assert replay(log.records()).containers == live


async def test_disk_rules(tmp_path: Path) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, _):
        await sup.create(spec(handle="plain"), ORIGIN)
        with pytest.raises(ConflictError, match=r"created with limits\.disk"):
            await sup.set_limits("plain", limits(disk={"byte_hard": 1 << 20}), ORIGIN)
        soft = await sup.set_limits("plain", limits(disk={"block_soft": 10}), ORIGIN)
        assert soft.disk is not None and soft.disk.block_soft == 10

        await sup.create(spec(handle="d", limits={"disk": {"byte_hard": 8 << 20}}), ORIGIN)
        cid = sup.state.containers["d"].container_id
        assert kernel.disk_quotas[cid].bytes == 8 << 20
        await sup.set_limits("d", limits(disk={"block_hard": 16 * 1024}), ORIGIN)
        assert kernel.disk_quotas[cid].bytes == 16 << 20
        kernel.disk_used[cid] = 12 << 20
        with pytest.raises(ConflictError):
            await sup.set_limits("d", limits(disk={"byte_hard": 4 << 20}), ORIGIN)
        d = sup.state.containers["d"].limits.disk
        assert d is not None and d.block_hard == 16 * 1024  # unchanged after the refusal
        with pytest.raises(ConflictError, match="not removed"):
            await sup.set_limits("d", limits(disk={"block_hard": 0}), ORIGIN)
        # Soft limits alone change nothing in the kernel.
        calls = len(kernel.calls)
        await sup.set_limits("d", limits(disk={"inode_soft": 3}), ORIGIN)
        assert kernel.calls[calls:] == []


async def test_oom_stops_the_container_once(tmp_path: Path) -> None:
    kernel = FakeKernel()
    async with running(make_config(tmp_path), kernel) as (sup, log):
        await sup.create(spec(handle="c", limits={"memory": {"limit_in_bytes": 1 << 25}}), ORIGIN)
        kernel.oom(sup.state.containers["c"].container_id)
        await wait_until(lambda: sup.info("c").state == "stopped")
        assert sup.info("c").events == ["oom"]
        assert ("stop-kill", "c") in kernel.calls
        stops = [r.event for r in log.records() if isinstance(r.event, ev.ContainerStopped)]
        assert [s.reason for s in stops] == ["oom"]


async def test_oom_while_down_is_handled_after_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    kernel = FakeKernel()
    async with running(config, kernel) as (sup, _):
        await sup.create(spec(handle="c", limits={"pids": {"max": 9}}), ORIGIN)
        cid = sup.state.containers["c"].container_id
    kernel.oom(cid)  # the watch of the old server is gone; the kernel remembers
    async with running(config, kernel) as (sup, _):
        await wait_until(lambda: sup.info("c").state == "stopped")
        assert sup.info("c").events == ["oom"]
        pids = sup.limits("c").pids
        assert pids is not None and pids.max == 9
