"""garden-monitor on real processes: exit statuses, the signal state a process starts with,
runtime failures, and that no monitor, zombie or process dir is left behind (a failed or
cancelled spawn, a process nobody recorded, an exit seen by `wait_exit`)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from garden.errors import ConflictError, ExecutableNotFoundError, RuntimeFailedError
from garden.linux import join_plan, monitor, topdir
from garden.linux.cgroups import detect
from garden.linux.join_plan import Join
from garden.linux.leftovers import monitors_of
from garden.linux.plan import SpawnedProcess
from garden.linux.proc import pid_start_time
from tests.integration.process.conftest import RUNC, Container
from tests.integration.process.helpers import process_json

pytestmark = pytest.mark.root


@pytest.fixture
def exe() -> str:
    found = monitor.find_garden_monitor()
    assert found is not None, "garden-monitor is not built: run scripts/setup.sh"
    return found


@pytest.fixture(params=["runtime-exec", "own-exec"])
def join(request: pytest.FixtureRequest, container: Container) -> Join | None:
    """Whether garden-monitor runs the runtime's `exec` or execs the process itself."""
    return None if request.param == "runtime-exec" else join_of(container)


def join_of(ctr: Container, *, start_time: int | None = None) -> Join:
    spec = json.loads((ctr.rootfs.parent / "config.json").read_text())
    return Join(
        init_pid=ctr.init_pid,
        init_start_time=start_time or pid_start_time(ctr.init_pid) or 0,
        namespaces=join_plan.namespace_flags(spec["linux"]["namespaces"]),
        cgroup_procs=tuple(str(f) for f in detect().procs_files(spec["linux"]["cgroupsPath"])),
        seccomp_bpf=None,
    )


async def spawn(
    ctr: Container, exe: str, process: dict[str, Any], pdir: Path, join: Join | None = None
) -> SpawnedProcess:
    return await monitor.spawn(
        runtime=RUNC,
        runtime_root=ctr.runtime_root,
        container_id=ctr.id,
        process_dir=pdir,
        process=process,
        socket_dir=ctr.socket_dir,
        log_format="passthrough",
        garden_monitor=exe,
        join=join,
    )


def children_named(name: bytes) -> list[int]:
    """Our own child processes (zombies included) whose command is `name`."""
    found = []
    for task in os.listdir("/proc/self/task"):
        kids = Path(f"/proc/self/task/{task}/children").read_text().split()
        for kid in kids:
            try:
                comm = Path(f"/proc/{kid}/comm").read_bytes().strip()
            except FileNotFoundError:
                continue
            if comm == name:
                found.append(int(kid))
    return found


async def run_script(
    ctr: Container, exe: str, script: str, join: Join | None = None
) -> tuple[SpawnedProcess, int, bytes]:
    pdir = ctr.processes / uuid.uuid4().hex
    facts = await spawn(ctr, exe, process_json(ctr, "sh", "-c", script), pdir, join)
    try:
        status = await monitor.wait_exit(facts)
        out = (pdir / monitor.STDOUT).read_bytes()
    finally:
        await monitor.cleanup(facts)
    return facts, status, out


@pytest.mark.parametrize(
    ("script", "want"),
    [("exit 0", 0), ("exit 7", 7), ("kill -KILL $$", 137), ("kill -TERM $$", 143)],
)
async def test_exit_status_and_monitor_reaped(
    container: Container, exe: str, join: Join | None, script: str, want: int
) -> None:
    facts, status, _ = await run_script(container, exe, script, join)
    assert (facts.monitor, facts.socket_link, facts.log_format) == (
        "garden-monitor",
        "",
        "passthrough",
    )
    assert status == want
    # wait_exit collected it: no zombie of it stays under the server.
    assert pid_start_time(facts.conmon_pid) is None
    assert facts.conmon_pid not in children_named(b"garden-monitor")
    assert not Path(facts.process_dir).exists()


async def test_process_starts_with_default_signals(
    container: Container, exe: str, join: Join | None
) -> None:
    """The server ignores SIGPIPE; its processes must not inherit that (nor a blocked mask)."""
    # (`; true`: sh does not exec grep then, so grep is the process's child as a job's is)
    script = "grep -E '^Sig(Ign|Blk)' /proc/self/status; true"
    _, status, out = await run_script(container, exe, script, join)
    assert status == 0
    assert out.split() == [b"SigBlk:", b"0" * 16, b"SigIgn:", b"0" * 16]


async def test_missing_executable_leaves_nothing(
    container: Container, exe: str, join: Join | None
) -> None:
    pdir = container.processes / uuid.uuid4().hex
    process = process_json(container, "sh")
    process["args"] = ["/no/such/program"]
    with pytest.raises(ExecutableNotFoundError, match="/no/such/program"):
        await spawn(container, exe, process, pdir, join)
    assert not pdir.exists()
    assert children_named(b"garden-monitor") == []


async def test_runtime_failure_is_an_error(container: Container, exe: str) -> None:
    pdir = container.processes / uuid.uuid4().hex
    with pytest.raises(monitor.RuntimeFailedError):
        await monitor.spawn(
            runtime=RUNC,
            runtime_root=container.runtime_root,
            container_id="gtest-no-such-container",
            process_dir=pdir,
            process=process_json(container, "true"),
            socket_dir=container.socket_dir,
            log_format="passthrough",
            garden_monitor=exe,
        )
    assert not pdir.exists()
    assert children_named(b"garden-monitor") == []


async def test_cancelled_spawn_leaves_nothing(
    container: Container, exe: str, join: Join | None
) -> None:
    pdir = container.processes / uuid.uuid4().hex
    with trio.CancelScope() as scope:
        scope.cancel()  # pending from the start: the spawn runs shielded, then undoes itself
        await spawn(container, exe, process_json(container, "sleep", "60"), pdir, join)
    assert scope.cancelled_caught
    assert not pdir.exists()
    assert children_named(b"garden-monitor") == []
    assert monitors_of(container.processes) == []


async def test_unrecorded_process_is_killed_by_its_files(
    container: Container, exe: str, join: Join | None
) -> None:
    """A crash between the spawn and its event: the start-up sweep finds the monitor by
    `monitor.pid` and the process by `pid`, and kills both."""
    pdir = container.processes / uuid.uuid4().hex
    facts = await spawn(container, exe, process_json(container, "sleep", "60"), pdir, join)
    try:
        assert monitors_of(container.processes) == [facts.conmon_pid]
        assert int((pdir / "monitor.pid").read_text()) == facts.conmon_pid
        monitor.kill_unrecorded(pdir)
        assert pid_start_time(facts.conmon_pid) is None  # killed and reaped
        with trio.fail_after(10):
            while monitor.signal(facts, 0):
                await trio.sleep(0.01)  # the container's init reaps the process
    finally:
        await monitor.cleanup(facts)
    assert monitors_of(container.processes) == []


async def test_monitor_keeps_no_inherited_fd(
    container: Container, exe: str, join: Join | None
) -> None:
    """Regression: hypercorn's listening sockets are inheritable, and a monitor that kept one
    open kept a restarted server off its port ("Address already in use")."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.set_inheritable(True)
    pdir = container.processes / uuid.uuid4().hex
    try:
        facts = await spawn(container, exe, process_json(container, "sleep", "60"), pdir, join)
        try:
            fd_dir = f"/proc/{facts.conmon_pid}/fd"
            targets = {int(fd): os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)}
            assert not [t for t in targets.values() if t.startswith("socket:")], targets
            # The monitor closes the sync pipe (fd 3) just after writing its line, which the
            # spawn may have read before the close: wait for it (regression: CI saw fd 3).
            with trio.fail_after(5):
                while len(os.listdir(fd_dir)) > 3:
                    await trio.sleep(0.005)
            fds = sorted(int(fd) for fd in os.listdir(fd_dir))
            assert fds == [0, 1, 2]  # /dev/null: the process's files are the runtime's
        finally:
            await monitor.cleanup(facts)
    finally:
        listener.close()


async def test_pid_files_naming_other_processes_kill_nothing(
    container: Container, tmp_path: Path
) -> None:
    """Regression: after a reboot the pid files of an unrecorded process dir may name any
    process; the start-up sweep must not SIGKILL it (it checked only that the pid existed)."""
    bystander = await trio.lowlevel.open_process(["sleep", "60"])
    try:
        pdir = tmp_path / "p"
        (pdir / "exit").mkdir(parents=True)
        for name in ("pid", "monitor.pid", "conmon.pid"):
            (pdir / name).write_text(str(bystander.pid))
        old = os.stat(pdir / "pid").st_mtime - 3600  # written an hour before it started
        os.utime(pdir / "pid", (old, old))
        monitor.kill_unrecorded(pdir)
        assert bystander.poll() is None  # still running: neither "process" nor "monitor"
    finally:
        bystander.kill()
        await bystander.wait()


async def test_a_first_process_flags_its_processes_dir_topdir(
    container: Container, exe: str
) -> None:
    """The processes dir a container's first spawn makes is `chattr +T`: ext4 then places each
    process dir (and its files) in a group with no just-deleted inodes to walk past."""
    parent = container.processes.parent / f"gtest-fresh-{uuid.uuid4().hex[:8]}"
    pdir = parent / "p1"
    try:
        facts = await spawn(container, exe, process_json(container, "true"), pdir)
        try:
            assert await monitor.wait_exit(facts) == 0
        finally:
            await monitor.cleanup(facts)
        assert (topdir.flags(parent) or 0) & topdir.FS_TOPDIR_FL
    finally:
        shutil.rmtree(parent, ignore_errors=True)


async def test_find_announced_reads_the_pids_a_spawn_left(container: Container, exe: str) -> None:
    """A crash between ProcessSpawning and ProcessStarted: the next start gets the same facts
    from the pid files as the spawn returned (announced first with pids 0)."""
    pdir = container.processes / uuid.uuid4().hex
    planned: list[SpawnedProcess] = []
    facts = await monitor.spawn(
        runtime=RUNC,
        runtime_root=container.runtime_root,
        container_id=container.id,
        process_dir=pdir,
        process=process_json(container, "sleep", "60"),
        socket_dir=container.socket_dir,
        log_format="passthrough",
        garden_monitor=exe,
        announce=planned.append,
    )
    try:
        unknown = {"pid": 0, "pid_start_time": None, "conmon_pid": 0, "conmon_start_time": None}
        assert planned == [msgspec.structs.replace(facts, **unknown)]
        assert facts.pid_start_time is not None and facts.conmon_start_time is not None
        assert monitor.find_announced(planned[0]) == facts
    finally:
        await monitor.cleanup(facts)


@asynccontextmanager
async def stand_in_monitor(
    pdir: Path, script: str
) -> AsyncIterator[tuple[trio.Process, SpawnedProcess]]:
    """A process dir whose `monitor.pid` names a stand-in running `sh -c script` with the dir
    on its command line (as garden-monitor has it), and the facts of a spawn announced there."""
    (pdir / "exit").mkdir(parents=True)
    # (`; exit`: a shell may exec a last lone command, whose command line lacks the dir)
    stand_in = await trio.lowlevel.open_process(["sh", "-c", f"{script}; exit", str(pdir)])
    try:
        # Regression (full check under load): the stand-in was looked at before it had exec'd
        # the shell, so nothing named the dir yet and it was not taken for the monitor.
        with trio.fail_after(10):
            while os.fsencode(pdir) not in Path(f"/proc/{stand_in.pid}/cmdline").read_bytes():
                await trio.sleep(0.005)
        (pdir / "monitor.pid").write_text(str(stand_in.pid))
        yield stand_in, SpawnedProcess(
            container_id="gtest-x", process_dir=str(pdir), socket_link="", pid=0,
            pid_start_time=None, conmon_pid=0, conmon_start_time=None, tty=False,
            stdin=False, log_format="passthrough", monitor="garden-monitor",
        )  # fmt: skip
    finally:
        stand_in.kill()
        await stand_in.wait()


async def test_find_announced_without_a_pid_kills_its_monitor(tmp_path: Path) -> None:
    """No pid file within the spawn's time: the runtime never reported a process. Whatever
    the monitor pid file names is killed if it monitors that dir (its command line names
    it), and the dir goes."""
    pdir = tmp_path / "p"
    async with stand_in_monitor(pdir, "sleep 60") as (stand_in, planned):
        assert monitor.find_announced(planned, timeout=0.05) is None
        assert pid_start_time(stand_in.pid) is None  # killed, and reaped (it is our child)
        assert not pdir.exists()


async def test_find_announced_waits_for_a_spawn_still_under_way(tmp_path: Path) -> None:
    """Regression (CI, crash at record:ProcessSpawning under load): the next start looked
    before the runtime had written the pid, called the spawn failed and killed its monitor.
    While the monitor lives and no pid is written, the start waits for one."""
    pdir = tmp_path / "p"
    # It "starts" pid 1: a pid that surely did not start when the file was written.
    script = f"sleep 0.3; echo 1 > {pdir}/pid.tmp; mv {pdir}/pid.tmp {pdir}/pid; sleep 60"
    async with stand_in_monitor(pdir, script) as (stand_in, planned):
        facts = await trio.to_thread.run_sync(monitor.find_announced, planned)
        assert facts is not None
        assert (facts.pid, facts.conmon_pid) == (1, stand_in.pid)
        assert facts.conmon_start_time == pid_start_time(stand_in.pid)
        assert facts.pid_start_time is None  # not the process the file was written for
        # A monitor that dies without a pid: the spawn failed, and is not waited for longer.
        (pdir / "pid").unlink()
        stand_in.kill()
        await stand_in.wait()
        assert monitor.find_announced(planned, timeout=30) is None
        assert not pdir.exists()


def test_an_exited_monitor_of_ours_is_reaped_by_the_sweep(exe: str, tmp_path: Path) -> None:
    """Regression (CI, test_unrecorded_process_is_killed_by_its_files): the sweep killed the
    process, its monitor exited meanwhile, and as a zombie it has no command line left to
    name its dir; it was left unreaped. A zombie monitor of ours is reaped now."""
    pdir = tmp_path / "p"
    (pdir / "exit").mkdir(parents=True)
    pid = os.posix_spawn(exe, [exe], {})  # usage error: exits at once, as our child
    pidfd = os.pidfd_open(pid)
    try:
        select.select([pidfd], [], [], 10)  # readable once it has exited: a zombie now
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b""
        (pdir / "monitor.pid").write_text(str(pid))
        monitor.kill_unrecorded(pdir)
        assert pid_start_time(pid) is None  # reaped
    finally:
        os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


# --- garden-monitor's own exec (--join) ------------------------------------------------------


async def test_own_exec_process_is_the_monitors_child_in_the_container(
    container: Container, exe: str
) -> None:
    """The process runs in the container's pid namespace and cgroups as the monitor's own child,
    with no fd of the monitor's (the plan, the init's pidfd, the sync pipe) but 0-2, and the
    monitor wrote its pid file."""
    pdir = container.processes / uuid.uuid4().hex
    script = "ls /proc/$$/fd | tr '\\n' ' '; exec sleep 60"
    facts = await spawn(container, exe, process_json(container, "sh", "-c", script), pdir,
                        join_of(container))  # fmt: skip
    try:
        assert int((pdir / "pid").read_text()) == facts.pid
        status = Path(f"/proc/{facts.pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["PPid"] == str(facts.conmon_pid)
        assert len(fields["NSpid"].split()) == 2  # a pid of its own inside the container
        for ns in ("mnt", "pid", "net", "uts", "ipc"):
            assert os.readlink(f"/proc/{facts.pid}/ns/{ns}") == os.readlink(
                f"/proc/{container.init_pid}/ns/{ns}"
            )
        assert (
            Path(f"/proc/{facts.pid}/cgroup").read_text()
            == Path(f"/proc/{container.init_pid}/cgroup").read_text()
        )
        with trio.fail_after(10):
            while not (pdir / monitor.STDOUT).read_bytes():
                await trio.sleep(0.01)
        assert (pdir / monitor.STDOUT).read_bytes().split() == [b"0", b"1", b"2"]
    finally:
        await monitor.cleanup(facts)
    assert children_named(b"garden-monitor") == []


async def test_own_exec_names_the_step_that_failed(container: Container, exe: str) -> None:
    pdir = container.processes / uuid.uuid4().hex
    process = process_json(container, "true")
    process["cwd"] = "/no/such/dir"  # the server makes it; here nobody did
    with pytest.raises(RuntimeFailedError, match="chdir: /no/such/dir: No such file"):
        await spawn(container, exe, process, pdir, join_of(container))
    assert not pdir.exists()
    assert children_named(b"garden-monitor") == []


async def test_own_exec_refuses_an_init_that_is_not_the_containers(
    container: Container, exe: str
) -> None:
    """A pid whose start time is not the recorded one (the init exited, the pid was reused)
    is never joined: nothing starts."""
    pdir = container.processes / uuid.uuid4().hex
    join = join_of(container, start_time=1)
    with pytest.raises(ConflictError):
        await spawn(container, exe, process_json(container, "true"), pdir, join)
    assert not pdir.exists()
    assert children_named(b"garden-monitor") == []


async def test_own_exec_with_a_cgroup_it_cannot_join_fails_whole(
    container: Container, exe: str, tmp_path: Path
) -> None:
    pdir = container.processes / uuid.uuid4().hex
    join = msgspec.structs.replace(
        join_of(container), cgroup_procs=(str(tmp_path / "no-cgroup" / "cgroup.procs"),)
    )
    with pytest.raises(RuntimeFailedError, match="cgroup"):
        await spawn(container, exe, process_json(container, "true"), pdir, join)
    assert not pdir.exists()
    assert children_named(b"garden-monitor") == []
