"""Fixtures for the real-kernel tests: a busybox rootfs, a unique cgroup parent that is removed
even when a test fails, and a `LinuxContainers` over runc with its state in a temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from garden.linux.cgroups import detect
from garden.linux.containers import LinuxContainers
from garden.linux.plan import ContainerPlan, MountPlan
from garden.linux.rootfs import mounts_under, unmount_overlay
from garden.linux.runtime import Runtime

BUSYBOX = "/bin/busybox"
UID_BASE = 100000


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, cgroups and mounts")
    if shutil.which("runc") is None or not Path(BUSYBOX).exists():
        pytest.skip("needs runc and busybox-static")


def _make_traversable(p: Path) -> None:
    """The user namespace's root (uid 100000 on the host) must reach the bundles."""
    for d in [p, *p.parents]:
        mode = d.stat().st_mode & 0o7777
        if mode & 0o001 == 0:
            d.chmod(mode | 0o001)


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs_root()
    root = tmp_path_factory.mktemp("rootfs-src") / "rootfs"
    for d in ("bin", "sbin", "usr/bin", "usr/sbin"):
        (root / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s"], check=True)
    for d in ("etc", "proc", "sys", "dev", "root", "home/vcap"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    os.chown(root / "home" / "vcap", 1000, 1000)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nvcap:x:1000:1000:vcap:/home/vcap:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nvcap:x:1000:\n")
    _make_traversable(root)
    return root


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    needs_root()
    parent = f"/gtest-{uuid.uuid4().hex[:8]}"
    yield parent
    cg = detect()

    async def cleanup() -> None:
        for child in cg.children(parent):
            for pid in cg.pids(child):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            await cg.remove(child, timeout=5)
        await cg.remove(parent, timeout=5)

    trio.run(cleanup)


@pytest.fixture
async def kernel(
    tmp_path: Path, cgroup_parent: str, busybox_rootfs: Path
) -> AsyncIterator[LinuxContainers]:
    state = tmp_path / "state"
    state.mkdir()
    _make_traversable(state)
    runtime = Runtime(shutil.which("runc") or "runc", state / "runc")
    k = LinuxContainers(
        state_dir=state, runtime=runtime, cgroups=detect(), cgroup_parent=cgroup_parent
    )
    try:
        yield k
    finally:
        with trio.CancelScope(shield=True):
            for cid in runtime.container_ids():
                await trio.run_process(
                    ["runc", "--root", str(runtime.root), "delete", "-f", cid],
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            for m in sorted(mounts_under(state), key=lambda p: -len(str(p))):
                await unmount_overlay(m.parent)
                await trio.run_process(["umount", "-l", str(m)], capture_stderr=True, check=False)


def make_plan(
    k: LinuxContainers,
    rootfs: Path,
    *,
    privileged: bool,
    bind_mounts: list[MountPlan] | None = None,
    netns_path: str | None = None,
) -> ContainerPlan:
    cid = f"c-{uuid.uuid4().hex[:10]}"
    return ContainerPlan(
        handle=f"h-{cid}",
        container_id=cid,
        container_path=str(k.container_path_for(cid)),
        rootfs=str(rootfs),
        hostname=f"host-{cid[-6:]}",
        env=["FOO=bar"],
        bind_mounts=bind_mounts or [],
        uid_base=None if privileged else UID_BASE,
        cgroup_path=k.cgroup_path_for(cid),
        netns_path=netns_path,
    )
