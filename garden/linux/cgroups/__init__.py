"""cgroups behind one interface: `Cgroups`, with a v1 (one hierarchy per controller) and a v2
(unified) implementation, picked by `detect()`.

The server owns one parent cgroup (e.g. "/garden-<tag>") in every hierarchy; each container's
cgroup is a leaf below it that the OCI runtime creates from `cgroupsPath`. Paths are cgroup
paths ("/garden/abc"), never host paths; every implementation takes its `root` (the cgroupfs
mount point, or a temp-dir fixture tree in tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from garden.linux.cgroups.base import split_path
from garden.linux.cgroups.oom_watch import OomWatch
from garden.linux.cgroups.v1 import CgroupsV1
from garden.linux.cgroups.v2 import CgroupsV2
from garden.linux.plan import ContainerStats, LimitChange, ResourceLimits

__all__ = ["Cgroups", "CgroupsV1", "CgroupsV2", "OomWatch", "detect", "split_path"]


class Cgroups(Protocol):
    root: Path

    async def ensure_parent(self, parent: str) -> None:
        """Create `parent` in every hierarchy (v2: and enable controllers for its children)."""
        ...

    async def remove(self, path: str, *, timeout: float = 2.0) -> None:
        """Remove `path` and any cgroups below it everywhere; gone counts as done. Retries
        while busy (processes still exiting) until `timeout`, then raises CgroupError."""
        ...

    async def remove_parent_if_empty(self, parent: str) -> bool:
        """Remove `parent` where it has no children left; True if it is gone everywhere."""
        ...

    def exists(self, path: str) -> bool:
        """True if `path` exists in any hierarchy."""
        ...

    def pids(self, path: str) -> list[int]:
        """Host pids of the processes in `path` (empty if it does not exist)."""
        ...

    def procs_files(self, path: str) -> list[Path]:
        """The `cgroup.procs` file of `path` in every hierarchy that has it: where a process
        joins the cgroup."""
        ...

    def children(self, parent: str) -> list[str]:
        """Cgroup paths of the direct children of `parent`, in any hierarchy, sorted."""
        ...

    def host_path(self, controller: str, path: str) -> Path | None:
        """The directory of `path` for `controller` (None if the controller is not mounted)."""
        ...

    async def set_limits(self, path: str, change: LimitChange) -> ResourceLimits:
        """Change the memory, cpu and pids limits of `path` as `change` says and return the
        limits now in force, as the kernel reports them. A limit the kernel refuses (e.g. a
        memory limit below what cannot be reclaimed: `ConflictError`) raises."""
        ...

    def limits(self, path: str) -> ResourceLimits:
        """The limits in force (raises CgroupError if the cgroup does not exist)."""
        ...

    def stats(self, path: str) -> ContainerStats:
        """Memory, cpu and pids figures now (empty dicts where the cgroup is gone)."""
        ...

    def has_swap_accounting(self, path: str) -> bool:
        """True if a memory+swap limit can be set for children of `path`."""
        ...

    def oom_kills(self, path: str) -> int | None:
        """How many processes the OOM killer has killed in `path`; None if it is gone."""
        ...

    def open_oom_watch(self, path: str) -> OomWatch:
        """A kernel notification that wakes on OOM events of `path` (close it when done)."""
        ...


def detect(root: str | Path = "/sys/fs/cgroup") -> Cgroups:
    """v2 if `root` itself is a cgroup2 mount (has cgroup.controllers), else v1 (hybrid hosts
    like this one: v1 hierarchies plus a controller-less cgroup2 at `unified`)."""
    root = Path(root)
    if (root / "cgroup.controllers").exists():
        return CgroupsV2(root)
    return CgroupsV1(root)
