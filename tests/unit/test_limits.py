"""The pure rules of limits: checks, the merge of a PUT, replay of LimitsSet, the disk pairs,
and the answer on the wire."""

from __future__ import annotations

import msgspec
import pytest

from garden import limits as lim
from garden.api import CpuLimits, DiskLimits, Limits, MemoryLimits, PidLimits
from garden.errors import InvalidRequestError
from garden.linux.plan import DiskQuota, ResourceLimits


def limits(**kw: object) -> Limits:
    return msgspec.convert(kw, Limits)


@pytest.mark.parametrize(
    "bad",
    [
        {"memory": {"limit_in_bytes": 1000}},
        {"memory": {"limit_in_bytes": -5}},
        {"memory": {"limit_in_bytes": 1 << 63}},
        {"cpu": {"limit_in_shares": 1}},
        {"cpu": {"limit_in_shares": 262145}},
        {"pids": {"max": -1}},
        {"pids": {"max": 1 << 23}},
        {"disk": {"byte_hard": -1}},
        {"disk": {"block_hard": 1 << 40}},
        {"disk": {"inode_hard": 1 << 32}},
    ],
)
def test_out_of_range_is_400(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        lim.check_limits(limits(**bad))


def test_each_kind_is_checked_on_its_own() -> None:
    ok = limits(
        memory={"limit_in_bytes": 64 << 20},
        cpu={"limit_in_shares": 2},
        pids={"max": 1},
        disk={"byte_hard": 1, "inode_hard": 5},
        bandwidth={},
    )
    lim.check_limits(ok)
    lim.check_limits(limits(memory={"limit_in_bytes": 0}, cpu={}, pids={"max": 0}))


def test_merge_absent_keeps_zero_removes() -> None:
    cur = lim.normalize(limits(memory={"limit_in_bytes": 1 << 26}, pids={"max": 9}))
    assert cur.memory == MemoryLimits(limit_in_bytes=1 << 26)
    same = lim.merge(cur, limits(memory={}))
    assert same == cur
    gone = lim.merge(cur, limits(memory={"limit_in_bytes": 0}))
    assert gone.memory == MemoryLimits(limit_in_bytes=None)
    assert gone.pids == PidLimits(max=9)
    added = lim.merge(cur, limits(cpu={"limit_in_shares": 100}))
    assert added.cpu == CpuLimits(limit_in_shares=100)
    assert added.memory == cur.memory


def test_disk_pairs_blocks_win_and_either_replaces_the_pair() -> None:
    d = lim.merge_disk(None, DiskLimits(block_hard=10, byte_hard=99999))
    assert lim.hard_bytes(d) == 10 * 1024
    d = lim.merge_disk(d, DiskLimits(byte_hard=4096))
    assert d.block_hard is None
    assert lim.hard_bytes(d) == 4096
    d = lim.merge_disk(d, DiskLimits(inode_hard=7, byte_soft=100))
    assert lim.hard_bytes(d) == 4096
    assert lim.soft_bytes(d) == 100
    assert lim.disk_quota(d) == DiskQuota(bytes=4096, inodes=7)
    d = lim.merge_disk(d, DiskLimits(block_soft=2))
    assert lim.soft_bytes(d) == 2048
    assert d.byte_soft is None


def test_own_layer_only_for_hard_disk_limits_at_create() -> None:
    assert lim.needs_own_layer(limits(disk={"byte_hard": 1}))
    assert lim.needs_own_layer(limits(disk={"inode_hard": 1}))
    assert not lim.needs_own_layer(limits(disk={"byte_soft": 1, "block_soft": 3}))
    assert not lim.needs_own_layer(limits(disk={"byte_hard": 0}))
    assert not lim.needs_own_layer(None)


def test_kernel_values_replace_requested_ones() -> None:
    cur = lim.normalize(limits(memory={"limit_in_bytes": 100_000_000}, cpu={"limit_in_shares": 3}))
    kernel = ResourceLimits(memory_bytes=99_999_744, cpu_shares=2, pids_max=None)
    out = lim.with_kernel_values(cur, kernel, {"memory"})
    assert out.memory == MemoryLimits(limit_in_bytes=99_999_744)
    assert out.cpu == CpuLimits(limit_in_shares=3)


def test_replace_kinds_is_how_replay_applies_limits_set() -> None:
    cur = lim.normalize(limits(memory={"limit_in_bytes": 1 << 26}, pids={"max": 4}))
    out = lim.replace_kinds(cur, limits(pids={"max": 8}))
    assert out.memory == cur.memory
    assert out.pids == PidLimits(max=8)


def test_wire_answers_every_field_with_zero_for_none() -> None:
    cur = lim.normalize(limits(disk={"byte_hard": 5}))
    assert msgspec.json.decode(msgspec.json.encode(lim.wire("disk", cur))) == {
        "block_soft": 0,
        "block_hard": 0,
        "inode_soft": 0,
        "inode_hard": 0,
        "byte_soft": 0,
        "byte_hard": 5,
    }
    assert lim.wire("memory", cur) == MemoryLimits(limit_in_bytes=0)
    assert lim.wire("pids", cur) == PidLimits(max=0)
