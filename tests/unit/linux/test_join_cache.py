"""How LinuxProcesses looks up the container a process joins (`_join`): once per init, in a
bounded table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from garden.linux import processes
from garden.linux.output import LogWatcher
from garden.linux.plan import Started
from garden.linux.processes import LinuxProcesses
from garden.linux.runtime import Runtime
from tests.unit.linux.test_oci import plan


class CountingCgroups:
    def __init__(self) -> None:
        self.lookups = 0

    def procs_files(self, path: str) -> list[Path]:
        self.lookups += 1
        return [Path("/sys/fs/cgroup/pids") / path.lstrip("/") / "cgroup.procs"]


def kernel(tmp_path: Path, cgroups: CountingCgroups) -> LinuxProcesses:
    return LinuxProcesses(
        runtime=Runtime(binary="crun", root=tmp_path),
        socket_dir=tmp_path,
        watcher=cast(LogWatcher, None),
        garden_monitor="/bin/garden-monitor",
        cgroups=cast(Any, cgroups),
    )


def test_a_join_is_looked_up_once_per_init(tmp_path: Path) -> None:
    cgroups = CountingCgroups()
    k = kernel(tmp_path, cgroups)
    p = plan(uid_base=None)  # privileged: no filter to look for
    first = k._join(p, Started(pid=10, pid_start_time=5))
    assert first is not None and first.cgroup_procs == (
        "/sys/fs/cgroup/pids/garden/cid1/cgroup.procs",
    )
    assert k._join(p, Started(pid=10, pid_start_time=5)) is first
    assert cgroups.lookups == 1
    k._join(p, Started(pid=11, pid_start_time=6))  # the container restarted: a new init
    assert cgroups.lookups == 2


def test_the_table_of_joins_stays_small(tmp_path: Path) -> None:
    """Regression: 4,096 joins were kept, and `just load` (a container made and destroyed
    every 0.12 s) saw the server's memory climb +0.86 MiB/min."""
    k = kernel(tmp_path, CountingCgroups())
    for n in range(1000):
        k._join(plan(uid_base=None, container_id=f"c{n}"), Started(pid=n + 2, pid_start_time=1))
    assert len(k._joins) == processes._JOINS_KEPT <= 128
    assert ("c999", 1001, 1) in k._joins and ("c0", 2, 1) not in k._joins  # the newest stay


def test_an_unprivileged_container_without_a_compiled_filter_is_left_to_the_runtime(
    tmp_path: Path,
) -> None:
    k = kernel(tmp_path, CountingCgroups())
    assert k._join(plan(), Started(pid=10, pid_start_time=5)) is None  # runc keeps no filter
    (tmp_path / "cid1").mkdir()
    (tmp_path / "cid1" / "seccomp.bpf").write_bytes(b"\0" * 8)
    joined = k._join(plan(), Started(pid=12, pid_start_time=5))
    assert joined is not None and joined.seccomp_bpf == str(tmp_path / "cid1" / "seccomp.bpf")
