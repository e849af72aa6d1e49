"""Real-kernel tests of the parts: the shifted lower copy, the overlay, cgroup v1 for real."""

from __future__ import annotations

import os
import stat
import time
import uuid
from pathlib import Path

import pytest
import trio

from garden.linux.cgroups import CgroupsV1, detect
from garden.linux.rootfs import mount_overlay, mounts_under, prepare_lower, unmount_overlay

from .conftest import needs_root

pytestmark = pytest.mark.root


@pytest.fixture
def src(tmp_path: Path) -> Path:
    needs_root()
    root = tmp_path / "src"
    (root / "bin").mkdir(parents=True)
    (root / "home" / "vcap").mkdir(parents=True)
    os.chown(root / "home" / "vcap", 1000, 1000)
    tool = root / "bin" / "suid"
    tool.write_text("#!/bin/sh\n")
    os.chown(tool, 0, 50)
    tool.chmod(0o6755)
    os.symlink("suid", root / "bin" / "link")
    return root


async def test_prepare_lower_shifts_and_keeps_setuid(src: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert await prepare_lower(src, None, cache) == src
    lower = await prepare_lower(src, 100000, cache)
    assert lower.parent == cache and lower != src
    st = os.lstat(lower / "bin" / "suid")
    assert (st.st_uid, st.st_gid) == (100000, 100050)
    assert stat.S_IMODE(st.st_mode) == 0o6755
    assert os.lstat(lower / "bin" / "link").st_uid == 100000
    assert os.lstat(lower / "home" / "vcap").st_uid == 101000
    assert os.lstat(lower).st_uid == 100000
    assert os.lstat(src / "bin" / "suid").st_uid == 0  # the source is untouched
    t0 = time.perf_counter()
    assert await prepare_lower(src, 100000, cache) == lower  # cached
    assert time.perf_counter() - t0 < 0.05
    assert [p.name for p in cache.iterdir()] == [lower.name]  # no temp dirs left


async def test_prepare_lower_concurrent_callers_share_one_copy(src: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    results: list[Path] = []

    async def one() -> None:
        results.append(await prepare_lower(src, 200000, cache))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
    assert len(set(results)) == 1
    assert [p.name for p in cache.iterdir()] == [results[0].name]


async def test_overlay_precreates_mountpoints_and_unmounts(src: Path, tmp_path: Path) -> None:
    cpath = tmp_path / "c1"
    cpath.mkdir()
    merged = await mount_overlay(src, cpath, 100000)
    try:
        assert merged in mounts_under(cpath)
        for name in ("proc", "sys", "dev", "tmp"):
            assert (merged / name).is_dir()
        assert (merged / ".catatonit").is_file()
        assert stat.S_IMODE((merged / "tmp").stat().st_mode) == 0o1777
        assert (merged / "bin" / "suid").exists()
        assert os.stat(merged).st_uid == 100000  # "/" takes its owner from upper
        (merged / "new").write_text("x")
        assert (cpath / "upper" / "new").exists()
    finally:
        await unmount_overlay(cpath)
    assert mounts_under(cpath) == []
    await unmount_overlay(cpath)  # idempotent
    await unmount_overlay(tmp_path / "nonexistent")


@pytest.fixture
def v1() -> CgroupsV1:
    needs_root()
    cg = detect()
    if not isinstance(cg, CgroupsV1):
        pytest.skip("host is not cgroup v1")
    return cg


async def test_cgroup_v1_real(v1: CgroupsV1) -> None:
    parent = f"/gtest-{uuid.uuid4().hex[:8]}"
    child = f"{parent}/leaf"
    proc = None
    try:
        await v1.ensure_parent(parent)
        names = {h.name for h in v1.hierarchies()}
        assert {"memory", "cpu", "pids", "cpuset"} <= names
        for h in v1.hierarchies():
            assert (h / parent.strip("/")).is_dir()
        cpuset = v1.host_path("cpuset", parent)
        assert cpuset is not None and (cpuset / "cpuset.cpus").read_text().strip()
        await v1.ensure_parent(child)  # a leaf, as the runtime would create it
        proc = await trio.lowlevel.open_process(["sleep", "1000"])
        for h in v1.hierarchies():
            (h / child.strip("/") / "cgroup.procs").write_text(str(proc.pid))
        assert v1.pids(child) == [proc.pid]
        assert v1.children(parent) == [child]
        assert not await v1.remove_parent_if_empty(parent)
        proc.kill()
        await proc.wait()
        await v1.remove(child)  # may be busy for a moment after the kill: retried
        assert not v1.exists(child)
        assert await v1.remove_parent_if_empty(parent)
        assert not v1.exists(parent)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            await proc.wait()
        await v1.remove(parent, timeout=5)
