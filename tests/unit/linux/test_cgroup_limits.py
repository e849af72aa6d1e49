"""Limits, figures and OOM watches of cgroups v1 and v2 against fixture trees: the files
written (and in which order), v2's mapping of shares to weights, and stats under v1 names."""

from __future__ import annotations

import errno
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from garden.errors import CgroupError, ConflictError
from garden.linux.cgroups import CgroupsV1, CgroupsV2, cpu, memory
from garden.linux.cgroups.oom_watch import InotifyOomWatch
from garden.linux.plan import LimitChange, ResourceLimits

UNLIMITED_V1 = "9223372036854771712"


def _files(d: Path, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (d / name).write_text(value + "\n")


@pytest.fixture
def v1(tmp_path: Path) -> CgroupsV1:
    root = tmp_path / "cg1"
    for c in ("memory", "cpu", "cpuacct", "pids"):
        _files(root / c, {"cgroup.procs": "1"})
    _files(
        root / "memory/g/c",
        {
            "memory.limit_in_bytes": UNLIMITED_V1,
            "memory.memsw.limit_in_bytes": UNLIMITED_V1,
            "memory.usage_in_bytes": "4096",
            "memory.max_usage_in_bytes": "8192",
            "memory.failcnt": "0",
            "memory.stat": "cache 10\nrss 20\ntotal_rss 20",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0",
        },
    )
    _files(root / "cpu/g/c", {"cpu.shares": "1024"})
    _files(root / "cpuacct/g/c", {"cpuacct.usage": "5000", "cpuacct.stat": "user 3\nsystem 1"})
    _files(root / "pids/g/c", {"pids.max": "max", "pids.current": "2", "pids.events": "max 0"})
    return CgroupsV1(root)


@pytest.fixture
def v2(tmp_path: Path) -> CgroupsV2:
    root = tmp_path / "cg2"
    _files(root, {"cgroup.controllers": "cpu memory pids", "cgroup.procs": "1"})
    _files(
        root / "g/c",
        {
            "memory.max": "max",
            "memory.swap.max": "max",
            "memory.current": "4096",
            "memory.stat": "anon 20\nfile 10\nkernel 5",
            "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0",
            "cpu.weight": "100",
            "cpu.stat": "usage_usec 7\nuser_usec 5\nsystem_usec 2",
            "pids.max": "max",
            "pids.current": "1",
        },
    )
    return CgroupsV2(root)


def _read(cg: CgroupsV1 | CgroupsV2, rel: str) -> str:
    return (cg.root / rel).read_text().strip()


async def test_v1_set_and_read_back(v1: CgroupsV1) -> None:
    change = LimitChange(memory_bytes=64 << 20, cpu_shares=512, pids_max=30)
    assert await v1.set_limits("/g/c", change) == ResourceLimits(
        memory_bytes=64 << 20, cpu_shares=512, pids_max=30
    )
    assert _read(v1, "memory/g/c/memory.memsw.limit_in_bytes") == str(64 << 20)
    assert _read(v1, "cpu/g/c/cpu.shares") == "512"
    # UNSET fields stay; None removes.
    out = await v1.set_limits("/g/c", LimitChange(pids_max=None))
    assert out.pids_max is None
    assert out.memory_bytes == 64 << 20
    assert _read(v1, "pids/g/c/pids.max") == "max"


def test_v1_memsw_first_when_raising_last_when_lowering(
    v1: CgroupsV1, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = v1.root / "memory/g/c"
    (d / "memory.limit_in_bytes").write_text(str(64 << 20))
    writes: list[str] = []
    real = memory.write_value

    def record(f: Path, value: str) -> None:
        writes.append(f.name)
        real(f, value)

    monkeypatch.setattr(memory, "write_value", record)
    memory.set_limit_v1(d, 128 << 20)
    assert writes == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    writes.clear()
    memory.set_limit_v1(d, 32 << 20)
    assert writes == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    writes.clear()
    assert memory.set_limit_v1(d, None) is None
    assert writes == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]


def test_v1_memory_below_use_is_a_conflict(v1: CgroupsV1, monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(f: Path, value: str) -> None:
        raise CgroupError(f"write {f}", OSError(errno.EBUSY, "busy")) from OSError(errno.EBUSY, "")

    monkeypatch.setattr(memory, "write_value", busy)
    with pytest.raises(ConflictError):
        memory.set_limit_v1(v1.root / "memory/g/c", 1 << 20)


def test_v1_without_swap_accounting_sets_memory_alone(v1: CgroupsV1) -> None:
    d = v1.root / "memory/g/c"
    (d / "memory.memsw.limit_in_bytes").unlink()
    assert not v1.has_swap_accounting("/g/c")
    assert memory.set_limit_v1(d, 8 << 20) == 8 << 20


async def test_missing_controller_cannot_enforce(v1: CgroupsV1) -> None:
    with pytest.raises(CgroupError):
        await v1.set_limits("/g/nope", LimitChange(cpu_shares=5))


def test_v1_stats_and_oom_count(v1: CgroupsV1) -> None:
    s = v1.stats("/g/c")
    assert s.memory["usage_in_bytes"] == 4096
    assert s.memory["rss"] == 20
    assert "limit_in_bytes" not in s.memory  # no limit
    assert s.cpu == {"usage": 5000, "user": 30_000_000, "system": 10_000_000}
    assert s.pids == {"current": 2, "max_reached": 0}
    assert v1.oom_kills("/g/c") == 0
    (v1.root / "memory/g/c/memory.oom_control").write_text("oom_kill_disable 0\noom_kill 2\n")
    assert v1.oom_kills("/g/c") == 2
    assert v1.oom_kills("/g/gone") is None
    assert v1.stats("/g/gone") == msgspec.convert({}, type(s))


@pytest.mark.parametrize(
    ("shares", "weight"), [(2, 1), (262144, 10000), (1024, 39), (512, 20), (100, 4)]
)
def test_v2_shares_to_weight_like_runc(shares: int, weight: int) -> None:
    assert cpu.shares_to_weight(shares) == weight
    # Read back as shares, and stable when written again.
    back = cpu.weight_to_shares(weight)
    assert cpu.shares_to_weight(back) == weight


async def test_v2_set_and_read_back(v2: CgroupsV2) -> None:
    change = LimitChange(memory_bytes=64 << 20, cpu_shares=512, pids_max=30)
    out = await v2.set_limits("/g/c", change)
    assert out.memory_bytes == 64 << 20
    assert out.cpu_shares is not None
    assert cpu.shares_to_weight(out.cpu_shares) == 20
    assert out.pids_max == 30
    assert _read(v2, "g/c/memory.max") == str(64 << 20)
    assert _read(v2, "g/c/memory.swap.max") == "0"  # memory+swap = the limit
    assert _read(v2, "g/c/cpu.weight") == "20"
    out = await v2.set_limits("/g/c", LimitChange(memory_bytes=None, cpu_shares=None))
    assert out.memory_bytes is None
    assert _read(v2, "g/c/memory.max") == "max"
    assert _read(v2, "g/c/memory.swap.max") == "max"
    assert _read(v2, "g/c/cpu.weight") == "100"
    assert v2.has_swap_accounting("/g/c")


def test_v2_stats_under_v1_names(v2: CgroupsV2) -> None:
    s = v2.stats("/g/c")
    assert s.memory["rss"] == 20
    assert s.memory["cache"] == 10
    assert s.memory["usage_in_bytes"] == 4096
    assert s.memory["oom_kill"] == 0
    assert s.cpu == {"usage": 7000, "user": 5000, "system": 2000}
    assert s.pids == {"current": 1}


async def test_v2_oom_watch_wakes_on_oom_only(v2: CgroupsV2) -> None:
    events = v2.root / "g/c/memory.events"
    watch = v2.open_oom_watch("/g/c")
    assert isinstance(watch, InotifyOomWatch)
    result: list[bool] = []
    try:
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                result.append(await watch.wait_oom())

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            events.write_text("low 0\nhigh 0\nmax 4\noom 0\noom_kill 0\n")  # not an OOM
            with trio.move_on_after(0.2):
                while not result:
                    await trio.sleep(0.01)
            assert result == []
            events.write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n")
    finally:
        watch.close()
    assert result == [True]
    assert v2.oom_kills("/g/c") == 1


async def test_v2_oom_watch_says_false_when_the_cgroup_goes(v2: CgroupsV2) -> None:
    events = v2.root / "g/c/memory.events"
    watch = v2.open_oom_watch("/g/c")
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                result: list[bool] = []

                async def waiter() -> None:
                    result.append(await watch.wait_oom())

                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                events.unlink()
    finally:
        watch.close()
    assert result == [False]
