"""cgroup v2 (unified): one tree; controllers are handed down level by level through
`cgroup.subtree_control`, which `ensure_parent` does for the server's parent cgroup."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import trio

from garden.errors import CgroupError
from garden.linux.cgroups.base import read_pids, rmdir_tree, split_path, subdirs

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

    def children(self, parent: str) -> list[str]:
        rel = split_path(parent)
        return [f"/{rel}/{n}" for n in subdirs(self.root / rel)]


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
