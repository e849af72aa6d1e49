"""Resource limits as the API speaks of them (API.md "Limits"), as pure rules: the checks of a
limit object (every 400), the merge of a PUT into the limits in force, and what the limits mean
for the kernel (a plan's `ResourceLimits` and `DiskQuota`).

Conventions: in a request, an absent field changes nothing and 0 removes the limit; in the
limits in force (state, events) None is "no limit"; on the wire the answer says 0 for None.
Each kind is checked and merged on its own. Bandwidth is networking's: `actors/net_rules.py`
checks it and the container's `bandwidth` holds it; here it is left alone.
"""

from __future__ import annotations

import msgspec

from garden.api import (
    CpuLimits,
    DiskLimits,
    Limits,
    MemoryLimits,
    PidLimits,
)
from garden.errors import InvalidRequestError
from garden.linux.plan import DiskQuota, ResourceLimits

KINDS = ("memory", "cpu", "disk", "pids")

MIN_MEMORY = 1 << 20  # below this not even the runtime's own init can start
MAX_MEMORY = 1 << 62  # v1 reads anything above as "no limit"
MIN_SHARES, MAX_SHARES = 2, 262144  # the kernel's bounds for cpu.shares
MAX_PIDS = 1 << 22  # PID_MAX_LIMIT
BLOCK = 1024  # a disk block of the API
MAX_DISK_BYTES = 1 << 44  # 16 TiB: ext4 with 4 KiB blocks
MAX_INODES = (1 << 32) - 1024


# -- checks (400) -------------------------------------------------------------------------------


def _check_range(name: str, value: int | None, low: int, high: int) -> None:
    if value is None or value == 0:
        return
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be 0 (no limit) or between {low} and {high}")


def check_memory(m: MemoryLimits) -> None:
    _check_range("memory limit_in_bytes", m.limit_in_bytes, MIN_MEMORY, MAX_MEMORY)


def check_cpu(c: CpuLimits) -> None:
    _check_range("cpu limit_in_shares", c.limit_in_shares, MIN_SHARES, MAX_SHARES)


def check_pids(p: PidLimits) -> None:
    _check_range("pids max", p.max, 1, MAX_PIDS)


def check_disk(d: DiskLimits) -> None:
    for name in ("block_soft", "block_hard"):
        _check_range(f"disk {name}", getattr(d, name), 1, MAX_DISK_BYTES // BLOCK)
    for name in ("byte_soft", "byte_hard"):
        _check_range(f"disk {name}", getattr(d, name), 1, MAX_DISK_BYTES)
    for name in ("inode_soft", "inode_hard"):
        _check_range(f"disk {name}", getattr(d, name), 1, MAX_INODES)


def check_limits(limits: Limits) -> None:
    """Check every kind given of memory, cpu, disk and pids; each on its own."""
    if limits.memory is not None:
        check_memory(limits.memory)
    if limits.cpu is not None:
        check_cpu(limits.cpu)
    if limits.disk is not None:
        check_disk(limits.disk)
    if limits.pids is not None:
        check_pids(limits.pids)


# -- merge: a request into the limits in force ----------------------------------------------------


def _given(new: int | None, old: int | None) -> int | None:
    """A request's field: absent keeps `old`, 0 removes the limit."""
    if new is None:
        return old
    return new or None


def merge_memory(cur: MemoryLimits | None, put: MemoryLimits) -> MemoryLimits:
    old = cur.limit_in_bytes if cur else None
    return MemoryLimits(limit_in_bytes=_given(put.limit_in_bytes, old))


def merge_cpu(cur: CpuLimits | None, put: CpuLimits) -> CpuLimits:
    old = cur.limit_in_shares if cur else None
    return CpuLimits(limit_in_shares=_given(put.limit_in_shares, old))


def merge_pids(cur: PidLimits | None, put: PidLimits) -> PidLimits:
    return PidLimits(max=_given(put.max, cur.max if cur else None))


def merge_disk(cur: DiskLimits | None, put: DiskLimits) -> DiskLimits:
    """Each of soft and hard is one limit given in blocks or bytes: giving either field of
    the pair replaces the pair (blocks win when both are given)."""
    cur = cur or DiskLimits()
    fields: dict[str, int | None] = {}
    for kind in ("soft", "hard"):
        block, byte = f"block_{kind}", f"byte_{kind}"
        new_block, new_byte = getattr(put, block), getattr(put, byte)
        if new_block is None and new_byte is None:
            fields[block], fields[byte] = getattr(cur, block), getattr(cur, byte)
        else:
            fields[block], fields[byte] = new_block or None, new_byte or None
        inode = f"inode_{kind}"
        fields[inode] = _given(getattr(put, inode), getattr(cur, inode))
    return DiskLimits(**fields)


def merge(cur: Limits, put: Limits) -> Limits:
    """The limits in force after `put`, for the kinds it gives; the others as they were
    (bandwidth is not kept here)."""
    return Limits(
        memory=merge_memory(cur.memory, put.memory) if put.memory is not None else cur.memory,
        cpu=merge_cpu(cur.cpu, put.cpu) if put.cpu is not None else cur.cpu,
        disk=merge_disk(cur.disk, put.disk) if put.disk is not None else cur.disk,
        pids=merge_pids(cur.pids, put.pids) if put.pids is not None else cur.pids,
    )


def normalize(limits: Limits | None) -> Limits:
    """The limits in force after a create with `limits` (0 means none)."""
    return merge(Limits(), limits or Limits())


def replace_kinds(cur: Limits, new: Limits) -> Limits:
    """`cur` with every kind that `new` gives replaced whole (how `LimitsSet` applies)."""
    changes = {k: getattr(new, k) for k in KINDS if getattr(new, k) is not None}
    return msgspec.structs.replace(cur, **changes)


def only_kinds(limits: Limits, kinds: set[str]) -> Limits:
    return Limits(**{k: getattr(limits, k) for k in KINDS if k in kinds})


def kinds_of(limits: Limits) -> set[str]:
    return {k for k in KINDS if getattr(limits, k) is not None}


# -- meaning for the kernel -----------------------------------------------------------------------


def hard_bytes(d: DiskLimits | None) -> int | None:
    if d is None:
        return None
    return d.block_hard * BLOCK if d.block_hard else d.byte_hard or None


def soft_bytes(d: DiskLimits | None) -> int | None:
    if d is None:
        return None
    return d.block_soft * BLOCK if d.block_soft else d.byte_soft or None


def disk_quota(d: DiskLimits | None) -> DiskQuota:
    return DiskQuota(bytes=hard_bytes(d), inodes=d.inode_hard or None if d else None)


def needs_own_layer(limits: Limits | None) -> bool:
    """A container created with a hard disk limit gets a filesystem of its own."""
    q = disk_quota(limits.disk if limits else None)
    return q.bytes is not None or q.inodes is not None


def resource_limits(limits: Limits) -> ResourceLimits:
    return ResourceLimits(
        memory_bytes=limits.memory.limit_in_bytes if limits.memory else None,
        cpu_shares=limits.cpu.limit_in_shares if limits.cpu else None,
        pids_max=limits.pids.max if limits.pids else None,
    )


def with_kernel_values(limits: Limits, kernel: ResourceLimits, kinds: set[str]) -> Limits:
    """`limits` with the values the kernel reports for the cgroup kinds in `kinds` (memory is
    rounded to pages; v2 maps shares to a weight and back)."""
    changes: dict[str, object] = {}
    if "memory" in kinds:
        changes["memory"] = MemoryLimits(limit_in_bytes=kernel.memory_bytes)
    if "cpu" in kinds:
        changes["cpu"] = CpuLimits(limit_in_shares=kernel.cpu_shares)
    if "pids" in kinds:
        changes["pids"] = PidLimits(max=kernel.pids_max)
    return msgspec.structs.replace(limits, **changes)


# -- the answer on the wire -----------------------------------------------------------------------


def wire(kind: str, limits: Limits) -> msgspec.Struct:
    """The limit of `kind` in force, as a PUT or GET answers it: every field, 0 for none."""
    value = getattr(limits, kind)
    empty: dict[str, msgspec.Struct] = {
        "memory": MemoryLimits(),
        "cpu": CpuLimits(),
        "disk": DiskLimits(),
        "pids": PidLimits(),
    }
    value = value if value is not None else empty[kind]
    fields = {f: getattr(value, f) or 0 for f in value.__struct_fields__}
    return type(value)(**fields)
