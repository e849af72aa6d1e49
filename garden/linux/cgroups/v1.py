"""cgroup v1: one hierarchy per controller (or co-mounted group) under the root, plus, on hybrid
hosts, the controller-less cgroup2 `unified` mount, which runc also populates.

Every directory under the root that holds a `cgroup.procs` file is a hierarchy; symlinked
aliases ("cpu,cpuacct" → "cpu") are visited once.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgspec
import trio

from garden.errors import CgroupError
from garden.linux.cgroups import cpu, memory, pids
from garden.linux.cgroups.base import read_pids, rmdir_tree, split_path, subdirs
from garden.linux.cgroups.oom_watch import EventfdOomWatch, OomWatch
from garden.linux.plan import ContainerStats, LimitChange, ResourceLimits

_PREFERRED_FOR_PIDS = ("pids", "memory", "freezer", "cpu", "systemd")


class CgroupsV1:
    version = 1

    def __init__(self, root: str | Path = "/sys/fs/cgroup") -> None:
        self.root = Path(root)
        self._by_controller: dict[str, Path] = {}
        self._hierarchies: list[Path] | None = None

    def hierarchies(self) -> list[Path]:
        """Mount points of the hierarchies, each once, sorted by name. Looked up once: they
        are mounted before the server starts and stay (a scan of the root is a few dozen stat
        calls, and `pids`, `exists`, `limits` and `remove` ask for it for every container)."""
        if self._hierarchies is None:
            self._hierarchies = self._scan()
        return list(self._hierarchies)

    def _scan(self) -> list[Path]:
        seen: set[str] = set()
        out: list[Path] = []
        for name in subdirs(self.root) + self._symlinked():
            p = self.root / name
            real = os.path.realpath(p)
            if real in seen or not (p / "cgroup.procs").exists():
                continue
            seen.add(real)
            out.append(p)
        return out

    def _symlinked(self) -> list[str]:
        try:
            with os.scandir(self.root) as it:
                return sorted(e.name for e in it if e.is_symlink())
        except FileNotFoundError:
            return []

    def host_path(self, controller: str, path: str) -> Path | None:
        rel = split_path(path)
        if controller not in self._by_controller:
            # Hierarchies are mounted before the server starts and stay: look each up once.
            found = None
            for h in self.hierarchies():
                if controller in h.name.split(",") or h.name == controller:
                    found = h
                    break
            if found is None:
                return None
            self._by_controller[controller] = found
        return self._by_controller[controller] / rel

    async def ensure_parent(self, parent: str) -> None:
        rel = split_path(parent)
        try:
            for h in self.hierarchies():
                if "cpuset" in h.name.split(","):
                    _mkdir_cpuset(h, rel)
                else:
                    (h / rel).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CgroupError(f"create cgroup parent {parent}", e) from e
        await trio.lowlevel.checkpoint()

    async def remove(self, path: str, *, timeout: float = 2.0) -> None:
        rel = split_path(path)
        deadline = trio.current_time() + timeout
        for h in self.hierarchies():
            await rmdir_tree(h / rel, deadline)
        await trio.lowlevel.checkpoint()

    async def remove_parent_if_empty(self, parent: str) -> bool:
        rel = split_path(parent)
        gone = True
        for h in self.hierarchies():
            try:
                os.rmdir(h / rel)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EBUSY):
                    raise CgroupError(f"rmdir {h / rel}", e) from e
                gone = False
        await trio.lowlevel.checkpoint()
        return gone

    def exists(self, path: str) -> bool:
        rel = split_path(path)
        return any((h / rel).is_dir() for h in self.hierarchies())

    def pids(self, path: str) -> list[int]:
        rel = split_path(path)
        by_name = {h.name: h for h in self.hierarchies()}
        for name in _PREFERRED_FOR_PIDS:
            if name in by_name:
                return read_pids(by_name[name] / rel / "cgroup.procs")
        hs = self.hierarchies()
        return read_pids(hs[0] / rel / "cgroup.procs") if hs else []

    def procs_files(self, path: str) -> list[Path]:
        rel = split_path(path)
        found = (h / rel / "cgroup.procs" for h in self.hierarchies())
        return [f for f in found if f.exists()]

    def children(self, parent: str) -> list[str]:
        rel = split_path(parent)
        names: set[str] = set()
        for h in self.hierarchies():
            names.update(subdirs(h / rel))
        return [f"/{rel}/{n}" for n in sorted(names)]

    # -- limits and figures ------------------------------------------------------------------

    def _dir(self, controller: str, path: str) -> Path:
        d = self.host_path(controller, path)
        if d is None:
            raise CgroupError(
                f"limit {controller} of {path}", f"the {controller} controller is not mounted"
            )
        return d

    async def set_limits(self, path: str, change: LimitChange) -> ResourceLimits:
        # Lowering a memory limit makes the kernel reclaim, which can take a while: a thread.
        return await trio.to_thread.run_sync(self._set_limits_sync, path, change)

    def _set_limits_sync(self, path: str, change: LimitChange) -> ResourceLimits:
        if not isinstance(change.memory_bytes, msgspec.UnsetType):
            memory.set_limit_v1(self._dir("memory", path), change.memory_bytes)
        if not isinstance(change.cpu_shares, msgspec.UnsetType):
            cpu.set_shares_v1(self._dir("cpu", path), change.cpu_shares)
        if not isinstance(change.pids_max, msgspec.UnsetType):
            pids.set_max(self._dir("pids", path), change.pids_max)
        return self.limits(path)

    def limits(self, path: str) -> ResourceLimits:
        return ResourceLimits(
            memory_bytes=memory.limit_v1(self._dir("memory", path)),
            cpu_shares=cpu.shares_v1(self._dir("cpu", path)),
            pids_max=pids.read_max(self._dir("pids", path)),
        )

    def stats(self, path: str) -> ContainerStats:
        mem, acct, pid = (self.host_path(c, path) for c in ("memory", "cpuacct", "pids"))
        return ContainerStats(
            memory=memory.stats_v1(mem) if mem else {},
            cpu=cpu.stats_v1(acct) if acct else {},
            pids=pids.stats(pid) if pid else {},
        )

    def has_swap_accounting(self, path: str) -> bool:
        d = self.host_path("memory", path)
        return d is not None and (d / "memory.memsw.limit_in_bytes").exists()

    def oom_kills(self, path: str) -> int | None:
        d = self.host_path("memory", path)
        return memory.oom_kills_v1(d) if d else None

    def open_oom_watch(self, path: str) -> OomWatch:
        return EventfdOomWatch.open(self._dir("memory", path))


def _mkdir_cpuset(h: Path, rel: str) -> None:
    """mkdir each level, copying cpuset.cpus/mems from the level above when empty: a v1 cpuset
    cgroup with empty cpus/mems cannot take processes."""
    cur = h
    for part in rel.split("/"):
        parent, cur = cur, cur / part
        try:
            cur.mkdir()
        except FileExistsError:
            pass
        for f in ("cpuset.cpus", "cpuset.mems"):
            mine = cur / f
            try:
                if mine.read_text().strip():
                    continue
                mine.write_text((parent / f).read_text())
            except FileNotFoundError:
                continue
