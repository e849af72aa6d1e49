"""LinuxContainers against the real kernel with runc: create, look from outside, stop, probe,
destroy, failed creates and leftovers. Every test leaves no mount, cgroup or runtime state."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import trio

from garden.errors import InvalidRequestError, RuntimeFailedError
from garden.linux import topdir
from garden.linux.containers import LinuxContainers
from garden.linux.plan import ContainerPlan, MountPlan, Started
from garden.linux.proc import is_running, is_same_process
from garden.linux.rootfs import mounts_under
from garden.linux.runtime import Runtime, crun_refuses_host

from .conftest import UID_BASE, make_plan

pytestmark = pytest.mark.root


def runc(k: LinuxContainers, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [k.runtime.binary, "--root", str(k.runtime.root), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=20,
    )


def runc_exec_detached(k: LinuxContainers, cid: str, *cmd: str) -> None:
    """`runc exec -d` hands its stdio to the process: never give it pipes (they stay open)."""
    subprocess.run(
        [k.runtime.binary, "--root", str(k.runtime.root), "exec", "-d", cid, *cmd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=20,
    )


def assert_nothing_left(k: LinuxContainers, plan: ContainerPlan) -> None:
    cpath = Path(plan.container_path)
    assert mounts_under(cpath) == []
    assert not cpath.exists()
    assert not k.cgroups.exists(plan.cgroup_path)
    assert not k.runtime.knows(plan.container_id)
    assert runc(k, "state", plan.container_id).returncode != 0


@pytest.mark.parametrize("privileged", [True, False], ids=["privileged", "unprivileged"])
async def test_create_inspect_destroy(
    kernel: LinuxContainers, busybox_rootfs: Path, tmp_path: Path, privileged: bool
) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    rw.chmod(0o777)
    ro.chmod(0o777)
    plan = make_plan(
        kernel,
        busybox_rootfs,
        privileged=privileged,
        bind_mounts=[
            MountPlan(source=str(rw), destination="/data/rw", read_only=False),
            MountPlan(source=str(ro), destination="/data/ro", read_only=True),
        ],
    )
    started = await kernel.create(plan)
    try:
        cpath = Path(plan.container_path)
        assert is_same_process(started.pid, started.pid_start_time)
        assert cpath / "rootfs" in mounts_under(cpath)
        # Bundles are placed as top-level dirs: away from just-deleted inodes (topdir.py).
        assert (topdir.flags(kernel.containers_dir) or 0) & topdir.FS_TOPDIR_FL
        memory = kernel.cgroups.host_path("memory", plan.cgroup_path)
        assert memory is not None and memory.is_dir()
        assert started.pid in kernel.cgroups.pids(plan.cgroup_path)
        assert (memory / "cgroup.procs").read_text().split() == [str(started.pid)]

        out = runc(kernel, "exec", plan.container_id, "hostname")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == plan.hostname
        with open(f"/proc/{started.pid}/uid_map") as f:
            uid_map = f.read().split()
        if privileged:
            assert uid_map == ["0", "0", "4294967295"]
        else:
            assert uid_map == ["0", str(UID_BASE), "65536"]
        assert (await kernel.probe(plan, started)) == "running"

        w = runc(kernel, "exec", plan.container_id, "sh", "-c", "echo hi > /data/rw/f")
        assert w.returncode == 0, w.stderr
        assert (rw / "f").read_text() == "hi\n"
        r = runc(kernel, "exec", plan.container_id, "sh", "-c", "echo hi > /data/ro/f")
        assert r.returncode != 0 and "Read-only" in r.stderr
        # root inside can write /etc (owned by mapped root via the shifted lower)
        e = runc(kernel, "exec", plan.container_id, "sh", "-c", "echo x >> /etc/passwd && id -u")
        assert e.returncode == 0 and e.stdout.strip() == "0", e.stderr
        ps = runc(kernel, "exec", plan.container_id, "cat", "/proc/1/cmdline")
        assert ps.stdout.split("\0")[:2] == ["/.catatonit", "-P"]
    finally:
        await kernel.destroy(plan)
    assert_nothing_left(kernel, plan)
    assert not is_running(started.pid, started.pid_start_time)
    assert (await kernel.probe(plan, started)) == "gone"
    await kernel.destroy(plan)  # idempotent


async def test_failed_create_bind_file_over_dir_leaves_nothing(
    kernel: LinuxContainers, busybox_rootfs: Path, tmp_path: Path
) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    plan = make_plan(
        kernel,
        busybox_rootfs,
        privileged=False,
        bind_mounts=[MountPlan(source=str(f), destination="/etc", read_only=True)],
    )
    # Found once the rootfs is mounted (garden/linux/bind_mounts.py), before the runtime
    # would fail on it; everything made until then is undone.
    with pytest.raises(InvalidRequestError, match="over the directory"):
        await kernel.create(plan)
    assert_nothing_left(kernel, plan)


async def test_failed_create_invalid_runtime_leaves_nothing(
    kernel: LinuxContainers, busybox_rootfs: Path
) -> None:
    bad = LinuxContainers(
        state_dir=kernel.state_dir,
        runtime=Runtime("/bin/false", kernel.runtime.root),
        cgroups=kernel.cgroups,
        cgroup_parent=kernel.cgroup_parent,
    )
    plan = make_plan(bad, busybox_rootfs, privileged=True)
    with pytest.raises(RuntimeFailedError):
        await bad.create(plan)
    assert_nothing_left(bad, plan)


async def test_create_cancelled_midway_leaves_nothing(
    kernel: LinuxContainers, busybox_rootfs: Path
) -> None:
    plan = make_plan(kernel, busybox_rootfs, privileged=False)
    with trio.move_on_after(0.015):  # lands inside `runc run` most of the time
        await kernel.create(plan)
    await kernel.destroy(plan)  # whatever was done, destroy finishes it
    assert_nothing_left(kernel, plan)


async def test_stop_keeps_init_and_destroy_after(
    kernel: LinuxContainers, busybox_rootfs: Path
) -> None:
    plan = make_plan(kernel, busybox_rootfs, privileged=False)
    started = await kernel.create(plan)
    try:
        for cmd in (
            ["sleep", "1000"],
            ["sh", "-c", "trap '' TERM; touch /tmp/trapped; sleep 1000"],
        ):
            runc_exec_detached(kernel, plan.container_id, *cmd)
        # The shell must have set its trap before the stop, or TERM kills it at once.
        trapped = Path(plan.container_path, "rootfs", "tmp", "trapped")
        with trio.fail_after(10):
            while not trapped.exists():
                await trio.sleep(0.01)
        assert len(kernel.cgroups.pids(plan.cgroup_path)) >= 3
        t0 = time.monotonic()
        await kernel.stop(plan, kill=False, timeout=0.5)
        took = time.monotonic() - t0
        assert kernel.cgroups.pids(plan.cgroup_path) == [started.pid]
        assert 0.4 < took < 5  # the TERM-ignoring shell needed the KILL after the timeout
        assert (await kernel.probe(plan, started)) == "running"
        runc_exec_detached(kernel, plan.container_id, "sleep", "1000")
        with trio.fail_after(2):
            await kernel.stop(plan, kill=True, timeout=10)
        assert kernel.cgroups.pids(plan.cgroup_path) == [started.pid]
    finally:
        await kernel.destroy(plan)
    assert_nothing_left(kernel, plan)


async def test_wait_exit_and_probe_after_init_dies(
    kernel: LinuxContainers, busybox_rootfs: Path
) -> None:
    plan = make_plan(kernel, busybox_rootfs, privileged=True)
    started = await kernel.create(plan)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kernel.wait_exit, started)
            await trio.sleep(0.05)
            os.kill(started.pid, signal.SIGKILL)
        assert (await kernel.probe(plan, started)) == "stopped"
        assert (await kernel.probe(plan, Started(pid=started.pid, pid_start_time=1))) == "stopped"
    finally:
        await kernel.destroy(plan)
    assert (await kernel.probe(plan, started)) == "gone"
    assert_nothing_left(kernel, plan)


async def test_leftovers_after_restart(kernel: LinuxContainers, busybox_rootfs: Path) -> None:
    plans = [make_plan(kernel, busybox_rootfs, privileged=p) for p in (True, False)]
    for p in plans:
        await kernel.create(p)
    # a new instance, as after a server crash: only the disk and the kernel remember
    fresh = LinuxContainers(
        state_dir=kernel.state_dir,
        runtime=Runtime(kernel.runtime.binary, kernel.runtime.root),
        cgroups=kernel.cgroups,
        cgroup_parent=kernel.cgroup_parent,
    )
    left = await fresh.list_leftovers()
    ids = {p.container_id for p in plans}
    assert set(left.runtime_ids) == ids
    assert set(left.cgroup_ids) == ids
    assert set(left.mount_ids) == ids
    assert set(left.dir_ids) == ids
    for cid in left.container_ids():
        await fresh.release_leftover(cid)
        await fresh.release_leftover(cid)
    assert (await fresh.list_leftovers()).container_ids() == set()
    for p in plans:
        assert_nothing_left(fresh, p)
    assert await fresh.remove_cgroup_parent_if_empty()


async def test_destroy_of_never_created_plan(kernel: LinuxContainers, busybox_rootfs: Path) -> None:
    plan = make_plan(kernel, busybox_rootfs, privileged=False)
    await kernel.destroy(plan)
    assert (await kernel.probe(plan, None)) == "gone"


async def test_userns_joining_outside_netns_binds_sys(
    kernel: LinuxContainers, busybox_rootfs: Path
) -> None:
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2")
    name = f"gtest-{uuid.uuid4().hex[:8]}"
    await trio.run_process(["ip", "netns", "add", name])
    try:
        plan = make_plan(kernel, busybox_rootfs, privileged=False, netns_path=f"/run/netns/{name}")
        started = await kernel.create(plan)  # sysfs cannot be mounted here: /sys is a bind
        try:
            ns = os.stat(f"/proc/{started.pid}/ns/net").st_ino
            assert ns == os.stat(f"/run/netns/{name}").st_ino
            assert os.listdir(f"/proc/{started.pid}/root/sys/class/net")
            # Known limit of runc 1.1.5: exec joins the user namespace before the network
            # namespace, which the user namespace does not own, so exec fails (EPERM).
            r = runc(kernel, "exec", plan.container_id, "true")
            assert r.returncode != 0 and "setns into net" in r.stderr
        finally:
            await kernel.destroy(plan)
        assert_nothing_left(kernel, plan)
    finally:
        await trio.run_process(["ip", "netns", "del", name], check=False)


async def test_create_destroy_latency(kernel: LinuxContainers, busybox_rootfs: Path) -> None:
    """Not a pass/fail benchmark: prints medians (run with -s to see them)."""
    for privileged in (True, False):
        creates, destroys = [], []
        for _ in range(5):
            plan = make_plan(kernel, busybox_rootfs, privileged=privileged)
            t0 = time.perf_counter()
            await kernel.create(plan)
            t1 = time.perf_counter()
            await kernel.destroy(plan)
            t2 = time.perf_counter()
            creates.append(t1 - t0)
            destroys.append(t2 - t1)
        creates.sort()
        destroys.sort()
        print(
            f"\nprivileged={privileged}: create median {creates[2] * 1000:.1f} ms, "
            f"destroy median {destroys[2] * 1000:.1f} ms"
        )


def test_remove_tree_refuses_while_mounted(tmp_path: Path) -> None:
    from garden.errors import MountError
    from garden.linux.rootfs import remove_tree

    if os.geteuid() != 0:
        pytest.skip("needs root: mounts")
    d = tmp_path / "c" / "rootfs"
    d.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(d)], check=True)
    try:
        with pytest.raises(MountError, match="still mounted"):
            trio.run(remove_tree, tmp_path / "c")
    finally:
        subprocess.run(["umount", str(d)], check=True)
    trio.run(remove_tree, tmp_path / "c")
    assert not (tmp_path / "c").exists()


async def test_crun_create_destroy(kernel: LinuxContainers, busybox_rootfs: Path) -> None:
    crun = shutil.which("crun")
    if crun is None:
        pytest.skip("crun not installed")
    refusal = crun_refuses_host()
    if refusal is not None:
        pytest.skip(refusal)
    k = LinuxContainers(
        state_dir=kernel.state_dir,
        runtime=Runtime(crun, kernel.state_dir / "crun"),
        cgroups=kernel.cgroups,
        cgroup_parent=kernel.cgroup_parent,
    )
    for privileged in (True, False):
        plan = make_plan(k, busybox_rootfs, privileged=privileged)
        started = await k.create(plan)
        try:
            assert (await k.probe(plan, started)) == "running"
        finally:
            await k.destroy(plan)
        assert_nothing_left(k, plan)
