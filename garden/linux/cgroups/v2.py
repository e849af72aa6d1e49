"""cgroup v2 (unified): one tree; controllers are handed down level by level through
`cgroup.subtree_control`, which `ensure_parent` does for the server's parent cgroup."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgspec
import trio

from garden.errors import CgroupError
from garden.linux.cgroups import cpu, memory, pids
from garden.linux.cgroups.base import read_pids, rmdir_tree, split_path, subdirs
from garden.linux.cgroups.oom_watch import InotifyOomWatch, OomWatch
from garden.linux.plan import ContainerStats, LimitChange, ResourceLimits

WANTED_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids")


class CgroupsV2:
    version = 2

    def __init__(self, root: str | Path = "/sys/fs/cgroup") -> None:
        self.root = Path(root)

    def host_path(self, controller: str, path: str) -> Path | None:
        return self.root / split_path(path)

    async def ensure_parent(self, parent: str) -> None:
        rel = split_path(parent)
        cur = self.root
        try:
            for part in rel.split("/"):
                _enable_controllers(cur)
                cur = cur / part
                cur.mkdir(exist_ok=True)
            _enable_controllers(cur)  # for the containers' cgroups below the parent
        except OSError as e:
            raise CgroupError(f"create cgroup parent {parent}", e) from e
        await trio.lowlevel.checkpoint()

    async def remove(self, path: str, *, timeout: float = 2.0) -> None:
        await rmdir_tree(self.root / split_path(path), trio.current_time() + timeout)

    async def remove_parent_if_empty(self, parent: str) -> bool:
        d = self.root / split_path(parent)
        await trio.lowlevel.checkpoint()
        try:
            os.rmdir(d)
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EBUSY):
                return False
            raise CgroupError(f"rmdir {d}", e) from e
        return True

    def exists(self, path: str) -> bool:
        return (self.root / split_path(path)).is_dir()

    def pids(self, path: str) -> list[int]:
        return read_pids(self.root / split_path(path) / "cgroup.procs")

    def procs_files(self, path: str) -> list[Path]:
        f = self.root / split_path(path) / "cgroup.procs"
        return [f] if f.exists() else []

    def children(self, parent: str) -> list[str]:
        rel = split_path(parent)
        return [f"/{rel}/{n}" for n in subdirs(self.root / rel)]

    # -- limits and figures ------------------------------------------------------------------

    def _dir(self, controller: str, path: str) -> Path:
        d = self.root / split_path(path)
        probe = {"memory": "memory.max", "cpu": "cpu.weight", "pids": "pids.max"}[controller]
        if not (d / probe).exists():
            raise CgroupError(
                f"limit {controller} of {path}",
                f"no {probe}: the {controller} controller is not enabled for this cgroup",
            )
        return d

    async def set_limits(self, path: str, change: LimitChange) -> ResourceLimits:
        return await trio.to_thread.run_sync(self._set_limits_sync, path, change)

    def _set_limits_sync(self, path: str, change: LimitChange) -> ResourceLimits:
        if not isinstance(change.memory_bytes, msgspec.UnsetType):
            memory.set_limit_v2(self._dir("memory", path), change.memory_bytes)
        if not isinstance(change.cpu_shares, msgspec.UnsetType):
            cpu.set_shares_v2(self._dir("cpu", path), change.cpu_shares)
        if not isinstance(change.pids_max, msgspec.UnsetType):
            pids.set_max(self._dir("pids", path), change.pids_max)
        return self.limits(path)

    def limits(self, path: str) -> ResourceLimits:
        return ResourceLimits(
            memory_bytes=memory.limit_v2(self._dir("memory", path)),
            cpu_shares=cpu.shares_v2(self._dir("cpu", path)),
            pids_max=pids.read_max(self._dir("pids", path)),
        )

    def stats(self, path: str) -> ContainerStats:
        d = self.root / split_path(path)
        return ContainerStats(memory=memory.stats_v2(d), cpu=cpu.stats_v2(d), pids=pids.stats(d))

    def has_swap_accounting(self, path: str) -> bool:
        return (self.root / split_path(path) / "memory.swap.max").exists()

    def oom_kills(self, path: str) -> int | None:
        return memory.oom_kills_v2(self.root / split_path(path))

    def open_oom_watch(self, path: str) -> OomWatch:
        return InotifyOomWatch.open(self._dir("memory", path))


def _enable_controllers(d: Path) -> None:
    """Enable in `d`'s subtree_control the wanted controllers that `d` has and not yet enabled."""
    try:
        available = (d / "cgroup.controllers").read_text().split()
        enabled = set((d / "cgroup.subtree_control").read_text().split())
    except FileNotFoundError:
        return
    missing = [c for c in WANTED_CONTROLLERS if c in available and c not in enabled]
    if not missing:
        return
    try:
        (d / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
    except OSError:
        # One refused controller fails the whole write: enable the others one by one.
        for c in missing:
            try:
                (d / "cgroup.subtree_control").write_text(f"+{c}")
            except OSError:
                continue
