"""Host processes by pid: identity (pid + start time), waiting for exit and killing.

A pid alone can be reused; `(pid, start_time)` names one process for its whole life. Waiting
uses a pidfd, so it works for processes that are not our children and never polls.
"""

from __future__ import annotations

import errno
import os
import signal

import trio

from garden.linux.kfiles import read_bytes


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, ...), None if the process is gone."""
    try:
        data = read_bytes(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and ')': everything after the last ')' is fields 3..
    return data[data.rfind(b")") + 2 :].split()


def pid_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), None if gone."""
    fields = _stat_fields(pid)
    try:
        return int(fields[22 - 3]) if fields else None
    except (IndexError, ValueError):
        return None


def is_running(pid: int, start_time: int) -> bool:
    """Like `is_same_process`, but a zombie (exited, not yet reaped) does not count."""
    fields = _stat_fields(pid) if pid > 0 else None
    if not fields:
        return False
    try:
        return fields[0] not in (b"Z", b"X") and int(fields[22 - 3]) == start_time
    except (IndexError, ValueError):
        return False


def is_same_process(pid: int, start_time: int) -> bool:
    """True if `pid` still names the process that started at `start_time` (zombies count)."""
    return pid > 0 and pid_start_time(pid) == start_time


def open_pidfd(pid: int, start_time: int | None = None) -> int | None:
    """A pidfd for `pid`, or None if it is gone or (with `start_time`) is another process now.

    The start time is checked after opening, so the pidfd surely names the intended process.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if start_time is not None and pid_start_time(pid) != start_time:
        os.close(fd)
        return None
    return fd


async def wait_pidfd(fd: int) -> None:
    """Wait until the process behind `fd` has exited (the fd becomes readable)."""
    await trio.lowlevel.wait_readable(fd)


async def wait_pid_exit(pid: int, start_time: int | None = None) -> None:
    """Return once the process exits; at once if it is already gone (or was replaced)."""
    fd = open_pidfd(pid, start_time)
    if fd is None:
        await trio.lowlevel.checkpoint()
        return
    try:
        await wait_pidfd(fd)
    finally:
        os.close(fd)


def signal_pidfd(fd: int, sig: int) -> bool:
    """Send `sig` through a pidfd; False if the process has already exited."""
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    except OSError as e:
        if e.errno == errno.ESRCH:
            return False
        raise
    return True


async def kill_and_wait(pid: int, start_time: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process (if it is still the same one) and wait for it to exit.

    With a signal other than SIGKILL the process may choose not to exit: bound the call with a
    cancel scope.
    """
    fd = open_pidfd(pid, start_time)
    if fd is None:
        await trio.lowlevel.checkpoint()
        return
    try:
        if signal_pidfd(fd, sig):
            await wait_pidfd(fd)
    finally:
        os.close(fd)


async def signal_and_wait_all(pids: list[int], sig: int) -> None:
    """Signal every pid (those that still exist) and wait until all of them have exited."""
    fds = [fd for fd in (open_pidfd(p) for p in pids) if fd is not None]
    try:
        live = [fd for fd in fds if signal_pidfd(fd, sig)]
        async with trio.open_nursery() as nursery:
            for fd in live:
                nursery.start_soon(wait_pidfd, fd)
    finally:
        for fd in fds:
            os.close(fd)


def capability_bounding_mask(pid: int | str = "self") -> int:
    """The CapBnd mask of a process (ours by default): the capabilities it can ever grant."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return 0
