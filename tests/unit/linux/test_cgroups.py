"""cgroups v1 and v2 against temp-dir fixture trees shaped like cgroupfs."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from garden.errors import CgroupError
from garden.linux.cgroups import CgroupsV1, CgroupsV2, detect, split_path

V1_CONTROLLERS = ["memory", "cpu", "pids", "freezer"]


@pytest.fixture
def v1_root(tmp_path: Path) -> Path:
    root = tmp_path / "cg1"
    for c in V1_CONTROLLERS:
        (root / c).mkdir(parents=True)
        (root / c / "cgroup.procs").write_text("1\n")
    (root / "cpuacct").symlink_to("cpu")  # alias of a co-mounted hierarchy
    (root / "notahierarchy").mkdir()
    return root


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids rdma\n")
    (root / "cgroup.subtree_control").write_text("memory\n")
    (root / "cgroup.procs").write_text("1\n")
    return root


def test_detect(v1_root: Path, v2_root: Path) -> None:
    assert isinstance(detect(v1_root), CgroupsV1)
    assert isinstance(detect(v2_root), CgroupsV2)


def test_split_path() -> None:
    assert split_path("/garden/x") == "garden/x"
    for bad in ("/", "", "/a/../b", "/a//b", "/./a"):
        with pytest.raises(CgroupError):
            split_path(bad)


def test_v1_hierarchies_skip_aliases_and_non_cgroups(v1_root: Path) -> None:
    names = [h.name for h in CgroupsV1(v1_root).hierarchies()]
    assert sorted(names) == sorted(V1_CONTROLLERS)


async def test_v1_parent_children_pids_remove(v1_root: Path) -> None:
    cg = CgroupsV1(v1_root)
    await cg.ensure_parent("/garden-t")
    await cg.ensure_parent("/garden-t")  # idempotent
    for c in V1_CONTROLLERS:
        assert (v1_root / c / "garden-t").is_dir()
    assert cg.children("/garden-t") == []
    # a leaf as the runtime would make it, only in some hierarchies (half-created)
    (v1_root / "memory" / "garden-t" / "c1").mkdir()
    (v1_root / "pids" / "garden-t" / "c2").mkdir()
    assert cg.children("/garden-t") == ["/garden-t/c1", "/garden-t/c2"]
    assert cg.exists("/garden-t/c1") and not cg.exists("/garden-t/c3")
    assert cg.pids("/garden-t/c1") == []  # no cgroup.procs file in the fixture leaf
    assert cg.host_path("memory", "/garden-t/c1") == v1_root / "memory" / "garden-t" / "c1"
    assert cg.host_path("blkio", "/garden-t/c1") is None
    assert not await cg.remove_parent_if_empty("/garden-t")
    await cg.remove("/garden-t/c1")
    await cg.remove("/garden-t/c1")  # gone counts as done
    await cg.remove("/garden-t/c2")
    assert cg.children("/garden-t") == []
    assert await cg.remove_parent_if_empty("/garden-t")
    assert not any((v1_root / c / "garden-t").exists() for c in V1_CONTROLLERS)
    assert await cg.remove_parent_if_empty("/garden-t")


async def test_v1_pids_prefers_pids_hierarchy(v1_root: Path) -> None:
    cg = CgroupsV1(v1_root)
    (v1_root / "pids" / "g").mkdir()
    (v1_root / "pids" / "g" / "cgroup.procs").write_text("12\n34\n")
    assert cg.pids("/g") == [12, 34]


async def test_v1_remove_nested(v1_root: Path) -> None:
    cg = CgroupsV1(v1_root)
    (v1_root / "memory" / "g" / "c" / "sub" / "deeper").mkdir(parents=True)
    await cg.remove("/g/c")
    assert not (v1_root / "memory" / "g" / "c").exists()
    assert (v1_root / "memory" / "g").exists()


async def test_v1_cpuset_parent_inherits_cpus_and_mems(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cs = root / "cpuset"
    cs.mkdir(parents=True)
    (cs / "cgroup.procs").write_text("")
    (cs / "cpuset.cpus").write_text("0-1\n")
    (cs / "cpuset.mems").write_text("0\n")
    # the kernel creates these files empty in a new v1 cpuset cgroup; emulate for level "a"
    (cs / "a").mkdir()
    (cs / "a" / "cpuset.cpus").write_text("")
    (cs / "a" / "cpuset.mems").write_text("\n")
    await CgroupsV1(root).ensure_parent("/a")
    assert (cs / "a" / "cpuset.cpus").read_text() == "0-1\n"
    assert (cs / "a" / "cpuset.mems").read_text() == "0\n"


async def test_v1_remove_busy_gives_up_at_deadline(
    v1_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    calls = 0

    def busy(path: object) -> None:
        nonlocal calls
        calls += 1
        raise OSError(errno.EBUSY, "busy")

    (v1_root / "memory" / "g").mkdir()
    monkeypatch.setattr(os, "rmdir", busy)
    with pytest.raises(CgroupError, match="rmdir"):
        await CgroupsV1(v1_root).remove("/g", timeout=0.05)
    assert calls > 1


async def test_v1_remove_busy_then_free(v1_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    real_rmdir = os.rmdir
    left = [2]

    def flaky(path: str) -> None:
        if left[0]:
            left[0] -= 1
            raise OSError(errno.EBUSY, "busy")
        real_rmdir(path)

    (v1_root / "memory" / "g").mkdir()
    monkeypatch.setattr(os, "rmdir", flaky)
    await CgroupsV1(v1_root).remove("/g", timeout=1)
    assert not (v1_root / "memory" / "g").exists()


async def test_v2_ensure_parent_enables_controllers(v2_root: Path) -> None:
    cg = CgroupsV2(v2_root)
    # the kernel would create these in a new cgroup; the fixture pre-creates the parent's
    (v2_root / "g").mkdir()
    (v2_root / "g" / "cgroup.controllers").write_text("cpu memory pids\n")
    (v2_root / "g" / "cgroup.subtree_control").write_text("")
    await cg.ensure_parent("/g")
    root_written = (v2_root / "cgroup.subtree_control").read_text().split()
    assert root_written == ["+cpuset", "+cpu", "+io", "+pids"]  # memory was already on
    assert (v2_root / "g" / "cgroup.subtree_control").read_text().split() == [
        "+cpu",
        "+memory",
        "+pids",
    ]


async def test_v2_ensure_parent_nested_new_dirs(v2_root: Path) -> None:
    cg = CgroupsV2(v2_root)
    await cg.ensure_parent("/a/b")  # new levels without controller files (fixture): no error
    assert (v2_root / "a" / "b").is_dir()


async def test_v2_children_pids_remove(v2_root: Path) -> None:
    cg = CgroupsV2(v2_root)
    (v2_root / "g" / "c1").mkdir(parents=True)
    (v2_root / "g" / "c1" / "cgroup.procs").write_text("5\n6\n")
    (v2_root / "g" / "c2").mkdir()
    assert cg.children("/g") == ["/g/c1", "/g/c2"]
    assert cg.pids("/g/c1") == [5, 6]
    assert cg.pids("/g/nope") == []
    assert cg.exists("/g/c2")
    assert cg.host_path("memory", "/g/c2") == v2_root / "g" / "c2"
    await cg.remove("/g/c2")
    await cg.remove("/g/c2")
    assert not cg.exists("/g/c2")
    assert not await cg.remove_parent_if_empty("/g")


async def test_remove_checkpoints() -> None:
    # sanity: remove of an absent cgroup is still a trio checkpoint-friendly call
    with trio.fail_after(1):
        await CgroupsV2(Path("/nonexistent-root")).remove("/x")
