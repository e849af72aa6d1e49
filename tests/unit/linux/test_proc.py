"""proc: process identity by start time and pidfd waits."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

from garden.linux.proc import (
    is_running,
    is_same_process,
    kill_and_wait,
    pid_start_time,
    signal_and_wait_all,
    wait_pid_exit,
)


def test_start_time_of_self_and_gone() -> None:
    st = pid_start_time(os.getpid())
    assert isinstance(st, int) and st > 0
    assert is_same_process(os.getpid(), st)
    assert not is_same_process(os.getpid(), st + 1)
    assert pid_start_time(2**22 + 12345) is None
    assert not is_same_process(0, 0)
    assert is_running(os.getpid(), st)
    assert not is_running(os.getpid(), st + 1)
    assert not is_running(2**22 + 12345, st)


async def test_comm_with_parens_and_spaces(tmp_path: Path) -> None:
    exe = tmp_path / "a) b (c"
    exe.symlink_to("/bin/sleep")
    proc = await trio.lowlevel.open_process([str(exe), "30"])
    try:
        st = pid_start_time(proc.pid)
        assert st is not None and st >= (pid_start_time(os.getpid()) or 0)
    finally:
        proc.kill()
        await proc.wait()


async def test_wait_pid_exit_and_kill() -> None:
    proc = await trio.lowlevel.open_process(["sleep", "30"])
    st = pid_start_time(proc.pid)
    assert st is not None
    with trio.move_on_after(0.05) as scope:
        await wait_pid_exit(proc.pid, st)
    assert scope.cancelled_caught  # still running
    await kill_and_wait(proc.pid, st)
    assert await proc.wait() == -signal.SIGKILL
    await wait_pid_exit(proc.pid, st)  # gone: returns at once
    await kill_and_wait(proc.pid, st)


async def test_kill_and_wait_ignores_other_process() -> None:
    proc = await trio.lowlevel.open_process(["sleep", "30"])
    try:
        st = pid_start_time(proc.pid)
        assert st is not None
        await kill_and_wait(proc.pid, st + 1)  # wrong start time: not ours, untouched
        assert proc.poll() is None
    finally:
        proc.kill()
        await proc.wait()


async def test_signal_and_wait_all_for_non_children() -> None:
    # double fork: the sleepers are not our children
    result = await trio.run_process(
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!; sleep 30 >/dev/null 2>&1 & echo $!"],
        capture_stdout=True,
    )
    out = result.stdout.split()
    pids = [int(p) for p in out]
    with trio.fail_after(5):
        await signal_and_wait_all([*pids, 2**22 + 999], signal.SIGTERM)
    assert all(_gone_or_zombie(p) for p in pids)


def _gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


async def test_zombie_is_same_process_but_not_running() -> None:
    proc = await trio.lowlevel.open_process(["true"])
    st = pid_start_time(proc.pid)
    assert st is not None
    await wait_pid_exit(proc.pid, st)  # exited, not reaped: a zombie child
    assert is_same_process(proc.pid, st)
    assert not is_running(proc.pid, st)
    await proc.wait()
