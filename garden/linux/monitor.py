"""Processes in a running container, each under a monitor of its own that outlives the server:
our `garden-monitor` (garden/linux/native/garden_monitor.c) for a batch process (no stdin, no
TTY, passthrough output) when it is installed, else conmon (2.1.6).

`spawn()` runs `garden-monitor DIR CID --join` (which execs the process into the container itself
from a plan: `join_plan`), `garden-monitor DIR CID runtime exec --detach ...` or `conmon ... -e
--exec-process-spec process.json` (conmon runs `runc exec --detach`) and returns a
`SpawnedProcess`: plain facts (pids with start times, paths) to store in an event
and use again after a server restart. Every other call takes those facts; none needs the task
or the Python objects that spawned the process.

Per-process directory (`process_dir`, conmon's `-b`; the caller picks it, e.g.
`<container_path>/processes/<id>`):
    process.json  the OCI process object (see `process_spec`), unless garden-monitor execs it
    log           conmon's k8s-file log of stdout/stderr (read it with `garden.linux.output`);
                  or, with `log_format="passthrough"`, `stdout` and `stderr`: the process's
                  exact bytes, written by the process itself (read them and the server's
                  `order` index with `garden.linux.passthrough`)
    exit/<cid>    the exit status, written (temp file + rename) once the process has exited and
                  the log is complete; 128+signal for a process killed by a signal
    pid, conmon.pid, conmon.err (conmon's own stderr), and conmon's ctl/winsz FIFOs and
    `attach` socket; or, under garden-monitor, pid and monitor.pid only.
`socket_dir` (short: `<socket_dir>/<16 hex>/attach` must fit in 108 bytes) receives conmon's
symlink to the process dir; `wait_exit` and `cleanup` remove it (conmon leaves it behind).

- `spawn(...)`: checks nothing about the executable (do `process_spec.find_executable` first:
  runc's own error arrives only after the fork), but maps runc's failure to
  `ExecutableNotFoundError` or `RuntimeFailedError` with runc's message. A TTY process starts
  with `consoleSize` from process.json (runc applies it before exec). Nothing is written to
  conmon's ctl FIFO at spawn: conmon parses one message per read, so a second message arriving
  with the first (a user's resize right after the start) would be lost.
- `wait_exit(facts)`: waits for conmon through a pidfd (no polling), returns the exit status.
- `read_exit_status(facts)`, `status(facts)`: what the files say now ("running"/"exited"/"lost").
- `signal(facts, signum)`: only if the pid still names the same process (start time checked).
- `resize(facts, rows, cols)`: a TTY's window size.
- `open_stdin(facts)`: a `trio.abc.SendStream` into the process's stdin through conmon's attach
  socket (only for processes spawned with `stdin=True`); `aclose()` closes stdin (EOF). Any
  attach connection closing closes stdin, so use one writer per process; a server crash closes
  it too. A TTY is different: closing only disconnects (conmon runs with --leave-stdin-open),
  any number of clients may come and go, and EOF is b"\\x04" (^D) as on a terminal.
- `cleanup(facts)`: kills what still runs, waits for conmon (bounded, shielded) and removes the
  socket link and the process dir (the log too).

Never let a process's conmon become a child of a subreaper of ours: it double-forks to init.
garden-monitor does not double-fork (a fork costs ~1 ms here): it stays the server's child, and
whoever sees it exit through its pidfd reaps it (`_reap`); after a server restart it is init's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import select
import shutil
import signal as _signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

import msgspec
import trio

from garden.errors import (
    ConflictError,
    ExecutableNotFoundError,
    InvalidRequestError,
    KernelError,
    RuntimeFailedError,
)
from garden.linux import join_plan
from garden.linux.join_plan import Join
from garden.linux.plan import SpawnedProcess
from garden.linux.proc import open_pidfd, pid_start_time, signal_pidfd
from garden.linux.topdir import make_topdir

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes, NUL included
_STDIN_PACKET = 16384  # conmon reads one attach packet into a 32 KiB buffer; more is cut off
_SPAWN_TIMEOUT = 60.0
_PID_POLL = 0.01  # s between looks at a pid file a crashed server's spawn may still write
_CLEANUP_TIMEOUT = 10.0

ProcessStatus = Literal["running", "exited", "lost"]
LogFormat = Literal["k8s-file", "passthrough"]
STDOUT, STDERR = "stdout", "stderr"  # a passthrough process's output files in its dir


GARDEN_MONITOR = "garden-monitor"


def find_garden_monitor() -> str | None:
    """The garden-monitor binary: beside this Python (the venv's bin, where scripts/setup.sh
    builds it), else on PATH; None if neither has it."""
    beside = Path(sys.executable).parent / GARDEN_MONITOR
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(GARDEN_MONITOR)


class MonitorLostError(KernelError):
    """conmon is gone without writing an exit status (killed, or the host rebooted)."""


async def spawn(
    *,
    runtime: str,
    runtime_root: str | Path,
    container_id: str,
    process_dir: str | Path,
    process: dict[str, Any],
    socket_dir: str | Path,
    stdin: bool = False,
    conmon: str = "conmon",
    garden_monitor: str | None = None,
    log_format: LogFormat = "k8s-file",
    before_start: Callable[[Path], object] | None = None,
    announce: Callable[[SpawnedProcess], object] | None = None,
    join: Join | None = None,
    executable: str | None = None,
) -> SpawnedProcess:
    """Start `process` (an OCI process object) in container `container_id` of the runtime
    binary `runtime` whose state dir is `runtime_root`; return once it runs (or has run).

    `process_dir` must not exist yet (its parents are created); a failed spawn removes it
    again. A TTY comes from `process["terminal"]`. `log_format` "passthrough" gives the
    process the files `stdout` and `stderr` of `process_dir` as its fds 1 and 2 (opened here,
    O_APPEND): conmon copies nothing. It is ignored for a TTY (conmon refuses it) and with
    `stdin` (conmon then forwards no stdin: the process gets conmon's own, /dev/null).
    `before_start(process_dir)` runs once the dir and those files exist, before conmon does
    (to watch them from the first byte); if it raises, nothing is started. So does
    `announce(planned)` after it, with the facts as they will be but for the pids (0), while
    the runtime has yet to run (the caller records them meanwhile: ProcessSpawning).
    `garden_monitor` (the path of the binary) monitors a passthrough process instead of
    conmon: ~4 ms less per spawn (docs/adr/garden-monitor.md). With `join` it also starts the
    process itself, joining the container `join` describes, instead of running the runtime's
    `exec --detach` (docs/adr/garden-monitor-exec.md); no process.json is written then, and
    `executable` (what `process_spec.find_executable` found) spares it the PATH lookup.
    Shielded from cancellation while conmon starts (bounded by 60 s); a caller cancelled
    meanwhile never gets the facts, so the process is killed and cleaned up before `Cancelled`
    propagates: a process runs only if its facts reached the caller.
    """
    pdir = Path(process_dir)
    tty = bool(process.get("terminal"))
    if tty or stdin:
        # conmon's passthrough hands the process conmon's own stdin (/dev/null here) and makes
        # no attach socket: a process that reads stdin or has a terminal keeps k8s-file.
        log_format = "k8s-file"
    ours = garden_monitor if log_format == "passthrough" else None
    link = Path("")  # garden-monitor makes no attach socket: nothing to link
    if ours is None:
        link = Path(socket_dir) / secrets.token_hex(8)
        if len(os.fsencode(link / "attach")) > _SUN_PATH_MAX:
            raise KernelError("conmon socket dir", f"{socket_dir} is too long for a socket path")
    if ours is None:
        join = None
    plan = join_plan.encode(process, join, executable) if join is not None else None
    _prepare_dirs(
        pdir,
        None if plan is not None else process,
        socket_dir=None if ours is not None else Path(socket_dir),
        passthrough=log_format == "passthrough",
    )
    planned = SpawnedProcess(
        container_id=container_id,
        process_dir=str(pdir),
        socket_link=str(link) if ours is None else "",
        pid=0,
        pid_start_time=None,
        conmon_pid=0,
        conmon_start_time=None,
        tty=tty,
        stdin=stdin,
        log_format=log_format,
        monitor="conmon" if ours is None else "garden-monitor",
    )
    try:
        if before_start is not None:
            before_start(pdir)
        if announce is not None:
            announce(planned)
    except BaseException:
        shutil.rmtree(pdir, ignore_errors=True)
        raise
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + _SPAWN_TIMEOUT
        try:
            if ours is not None:  # kills and reaps its monitor itself on every failure
                joined = (plan, join) if plan is not None and join is not None else None
                pid, conmon_pid = await _run_garden_monitor(
                    ours, runtime, runtime_root, pdir, container_id, joined
                )
            else:
                cmd = _conmon_cmd(
                    conmon, runtime, runtime_root, container_id, pdir, link, socket_dir,
                    log_format=log_format, stdin=stdin, tty=tty,
                )  # fmt: skip
                try:
                    pid, conmon_pid = await _run_conmon(
                        cmd, pdir, passthrough=log_format == "passthrough"
                    )
                except BaseException:  # on timeout; after a failed exec conmon has gone
                    _kill_monitor_of(pdir)
                    _remove_link(link, pdir)
                    raise
        except BaseException:  # nothing may stay behind a failed spawn
            shutil.rmtree(pdir, ignore_errors=True)  # best effort: the error says what failed
            raise
    if scope.cancelled_caught:
        raise RuntimeFailedError("conmon exec", f"no pid within {_SPAWN_TIMEOUT} s")
    facts = msgspec.structs.replace(
        planned,
        pid=pid,
        pid_start_time=pid_start_time(pid),
        conmon_pid=conmon_pid,
        conmon_start_time=pid_start_time(conmon_pid),
    )
    try:
        await trio.lowlevel.checkpoint_if_cancelled()
    except BaseException:  # the caller is gone and would lose the facts: undo the process
        await cleanup(facts)
        raise
    return facts


def _conmon_cmd(
    conmon: str,
    runtime: str,
    runtime_root: str | Path,
    container_id: str,
    pdir: Path,
    link: Path,
    socket_dir: str | Path,
    *,
    log_format: LogFormat,
    stdin: bool,
    tty: bool,
) -> list[str]:
    log = f"k8s-file:{pdir / 'log'}" if log_format == "k8s-file" else "passthrough"
    return [
        conmon, "--api-version", "1",
        "-c", container_id, "-u", link.name, "-n", f"{container_id}-{link.name}",
        "-r", runtime, "--runtime-arg", "--root", "--runtime-arg", str(runtime_root),
        "-b", str(pdir), "-p", str(pdir / "pid"), "-P", str(pdir / "conmon.pid"),
        "-l", log, "--exit-dir", str(pdir / "exit"),
        "--socket-dir-path", str(socket_dir), "--log-level", "error", "--syslog",
        # No fsync of the log at exit: it stood between the process's exit and its exit file
        # (a 256 MiB log took seconds), and the log and the exit file are for a crash of the
        # server, which the page cache survives; conmon never fsyncs the exit file either.
        "--no-sync-log",
        "-e", "--exec-process-spec", str(pdir / "process.json"),
        *(["-i"] if stdin else []), *(["-t"] if tty else []),
        # A TTY gets EOF from ^D, and must stay writable for the next client after one leaves.
        *(["--leave-stdin-open"] if stdin and tty else []),
    ]  # fmt: skip


def _prepare_dirs(
    pdir: Path, process: dict[str, Any] | None, *, socket_dir: Path | None, passthrough: bool
) -> None:
    """The process dir with its exit dir, process.json (unless `process` is None: nothing
    runs the runtime with it) and (passthrough) output files; and
    conmon's socket dir when conmon runs it. The container's processes dir is flagged
    `chattr +T` when made (garden.linux.topdir: each process dir and its files land where
    nothing was just deleted, which costs ext4 without a journal 0.3-3 ms per file)."""
    if socket_dir is not None:
        socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.mkdir(pdir)
    except FileNotFoundError:  # the container's first process: its processes dir spreads them
        make_topdir(pdir.parent)
        os.mkdir(pdir)
    os.mkdir(pdir / "exit")
    if process is not None:
        (pdir / "process.json").write_text(json.dumps(process))
    if passthrough:
        for name in (STDOUT, STDERR):
            os.close(os.open(pdir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))


def kill_unrecorded(pdir: Path) -> None:
    """Kill the process and the conmon of a process dir whose facts were never recorded (a
    crash between spawn and its event), by the pid files conmon wrote."""
    pid = _read_pid(pdir / "pid")
    if pid > 0:
        fd = open_pidfd(pid)
        if fd is not None:
            try:
                if _started_when_written(pid, pdir / "pid"):
                    signal_pidfd(fd, _signal.SIGKILL)
            finally:
                os.close(fd)
    _kill_monitor_of(pdir)


def find_announced(
    planned: SpawnedProcess, *, timeout: float = _SPAWN_TIMEOUT
) -> SpawnedProcess | None:
    """The facts of a process whose spawn was announced (`planned`, pids 0) but whose pids
    never reached the log (the server stopped in between), from the pid files in its dir; or
    None if the runtime wrote no pid (no process ran: then its monitor, if any, is killed
    and the dir removed). A spawn still under way (its monitor lives, the runtime has yet to
    write the pid) is waited for, at most `timeout` s. A pid that no longer names the process
    or the monitor the file was written for gets no start time: that one is gone (its exit
    file, if any, says how). Blocking: a worker thread's work."""
    pdir = Path(planned.process_dir)
    name = "monitor.pid" if planned.monitor == "garden-monitor" else "conmon.pid"
    pid = _wait_for_pid(pdir, name, timeout)
    if pid <= 0:
        kill_unrecorded(pdir)
        shutil.rmtree(pdir, ignore_errors=True)
        return None
    monitor_pid = _read_pid(pdir / name)
    monitor_start = None
    if monitor_pid > 0 and _monitors(monitor_pid, pdir):
        monitor_start = pid_start_time(monitor_pid)
    start = pid_start_time(pid) if _started_when_written(pid, pdir / "pid") else None
    return msgspec.structs.replace(
        planned,
        pid=pid,
        pid_start_time=start,
        conmon_pid=max(monitor_pid, 0),
        conmon_start_time=monitor_start,
    )


def _wait_for_pid(pdir: Path, monitor_file: str, timeout: float) -> int:
    """The pid the runtime wrote to `pdir/pid`; while there is none but the monitor of
    `pdir` lives (it is still starting the runtime), wait for either, at most `timeout` s;
    0 if no pid came."""
    deadline = time.monotonic() + timeout
    while True:
        pid = _read_pid(pdir / "pid")  # (an empty file: the runtime is writing it)
        if pid > 0:
            return pid
        monitor_pid = _read_pid(pdir / monitor_file)
        fd = open_pidfd(monitor_pid) if monitor_pid > 0 else None
        if fd is None:
            return _read_pid(pdir / "pid")  # the monitor is gone: whatever it left
        try:
            remaining = deadline - time.monotonic()
            if not _monitors(monitor_pid, pdir) or remaining <= 0:
                return 0
            # The pidfd turns readable when the monitor exits; the pid file is looked at
            # again every _PID_POLL s meanwhile (nothing signals its writing).
            select.select([fd], [], [], min(remaining, _PID_POLL))
        finally:
            os.close(fd)


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _started_when_written(pid: int, pid_file: Path, slack: float = 60.0) -> bool:
    """True if `pid` started within `slack` s before `pid_file` was written, as the process
    the runtime wrote it for did. A pid file outlives a reboot, when its number may name any
    process that started since."""
    ticks = pid_start_time(pid)
    try:
        written = pid_file.stat().st_mtime
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    except (OSError, StopIteration, ValueError):
        return False
    if ticks is None:
        return False
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return written - slack <= started <= written + 2.0  # btime is in whole seconds


def _kill_monitor_of(pdir: Path) -> None:
    """SIGKILL the monitor whose pid file is in `pdir` (and reap it if it is our child)."""
    for name in ("conmon.pid", "monitor.pid"):
        monitor_pid = _read_pid(pdir / name)
        fd = open_pidfd(monitor_pid) if monitor_pid > 0 else None
        if fd is not None:
            try:
                if _monitors(monitor_pid, pdir):
                    signal_pidfd(fd, _signal.SIGKILL)
                    _reap(fd, wait=True)
            finally:
                os.close(fd)


def _monitors(pid: int, pdir: Path) -> bool:
    """True if `pid` (checked through a pidfd held by the caller) is a monitor of `pdir`:
    its command line names the dir (conmon's `-b`, garden-monitor's first argument). A pid
    file outlives a reboot, and its number may name anything by then. A monitor that is
    exiting or has exited (its memory gone: no command line left, only its name) counts too:
    signalling it does nothing, and it still has to be reaped if it is our child. (Regression:
    only a zombie counted, and one caught between its memory's release and its exit was left
    unreaped: test_unrecorded_process_is_killed_by_its_files, in the full check.)"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if argv == [b""]:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            name = stat[stat.find(b"(") + 1 : stat.rfind(b")")]
            return name in (os.fsencode(GARDEN_MONITOR), b"conmon")
    except OSError:
        return False
    return os.fsencode(pdir) in argv


def _reap(pidfd: int, *, wait: bool = False) -> None:
    """Collect the exit of the process behind `pidfd` if it is a child of ours (a
    garden-monitor this server started); nothing for anyone else's. `wait`: block until it
    has exited (only right after a SIGKILL)."""
    flags = os.WEXITED | (0 if wait else os.WNOHANG)
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PIDFD, pidfd, flags)


async def _run_conmon(cmd: list[str], pdir: Path, *, passthrough: bool) -> tuple[int, int]:
    """Run conmon's start/sync pipe protocol; return (process pid, conmon pid).

    With `passthrough` conmon's stdout and stderr (which it hands on to the process) are the
    files `stdout` and `stderr` of `pdir`; else stdout is /dev/null and stderr `conmon.err`."""
    sync_r, sync_w = os.pipe()
    start_r, start_w = os.pipe()
    try:
        with contextlib.ExitStack() as files:
            if passthrough:
                out: int | IO[bytes] = files.enter_context(_append(pdir / STDOUT))
                err: int | IO[bytes] = files.enter_context(_append(pdir / STDERR))
            else:
                out = subprocess.DEVNULL
                err = files.enter_context(open(pdir / "conmon.err", "wb"))  # noqa: ASYNC230
            child = await trio.lowlevel.open_process(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=str(pdir),
                pass_fds=(sync_w, start_r),
                env={
                    "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "_OCI_SYNCPIPE": str(sync_w),
                    "_OCI_STARTPIPE": str(start_r),
                },
            )
        os.close(sync_w)
        os.close(start_r)
        sync_w = start_r = -1
        os.write(start_w, b"\0")  # conmon waits for this byte before anything else
        os.close(start_w)
        start_w = -1
        await child.wait()  # the first conmon exits at once (double fork)
        message = await _read_sync_message(sync_r)
    finally:
        for fd in (sync_r, sync_w, start_r, start_w):
            if fd >= 0:
                os.close(fd)
    data = message.get("data")
    if not isinstance(data, int) or data <= 0:
        raise _spawn_error(str(message.get("message") or _runtime_stderr(pdir)))
    try:
        conmon_pid = int((pdir / "conmon.pid").read_text().strip())
    except (OSError, ValueError) as e:
        raise RuntimeFailedError("conmon exec: read conmon.pid", e) from e
    return data, conmon_pid


async def _run_garden_monitor(
    exe: str,
    runtime: str,
    runtime_root: str | Path,
    pdir: Path,
    container_id: str,
    joined: tuple[bytes, Join] | None = None,
) -> tuple[int, int]:
    """Start garden-monitor for the runtime's `exec --detach` (or, `joined`, to exec the
    plan itself) and read its one sync line; return (process pid, monitor pid). The process's
    stdout and stderr are the files `stdout` and `stderr` of `pdir`, its stdin /dev/null. On
    any failure the monitor is gone (killed if need be) and reaped before this raises."""
    if joined is None:
        tail = [
            runtime, "--root", str(runtime_root), "exec", "--detach",
            "--pid-file", str(pdir / "pid"), "--process", str(pdir / "process.json"),
            container_id,
        ]  # fmt: skip
    else:
        tail = ["--join"]
    sync_r, sync_w = os.pipe()
    out = err = pidfd = monitor_pid = plan_fd = init_fd = -1
    try:
        out = os.open(pdir / STDOUT, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        err = os.open(pdir / STDERR, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        extra: list[int] = []
        if joined is not None:
            plan_fd, init_fd = _join_fds(*joined)
            extra = [plan_fd, init_fd]
        argv = [exe, str(pdir), container_id, *tail]
        monitor_pid = _posix_spawn(exe, argv, out, err, sync_w, extra)
        pidfd = os.pidfd_open(monitor_pid)
        for fd in (out, err, sync_w, plan_fd, init_fd):
            if fd >= 0:
                os.close(fd)
        out = err = sync_w = plan_fd = init_fd = -1
        line = await _read_sync_line(sync_r)
    except BaseException:
        if pidfd >= 0:  # cancelled or timed out: the monitor must not stay (nor a zombie)
            signal_pidfd(pidfd, _signal.SIGKILL)
            _reap(pidfd, wait=True)
        raise
    finally:
        for fd in (sync_r, sync_w, out, err, plan_fd, init_fd):
            if fd >= 0:
                os.close(fd)
    try:
        kind, _, value = line.partition(" ")
        if kind == "P" and value.isdigit() and int(value) > 0:
            return int(value), monitor_pid
        # It exits right after a failure: reap it here (killed if it does not, in time).
        with trio.move_on_after(_CLEANUP_TIMEOUT) as waited:
            await trio.lowlevel.wait_readable(pidfd)
        if waited.cancelled_caught:
            signal_pidfd(pidfd, _signal.SIGKILL)
        _reap(pidfd, wait=True)
        if kind == "E":
            raise _spawn_error(_runtime_stderr(pdir) or f"runtime exit status {value}")
        if kind == "M" and value.isdigit():  # an OSError, so that a full disk answers 507
            code = int(value)
            raise RuntimeFailedError("garden-monitor", OSError(code, os.strerror(code)))
        raise RuntimeFailedError("garden-monitor", f"exited without a pid (said {line!r})")
    finally:
        trio.lowlevel.notify_closing(pidfd)
        os.close(pidfd)


def _join_fds(plan: bytes, join: Join) -> tuple[int, int]:
    """A memfd holding `plan` and a pidfd of the container's init (checked by start time),
    for garden-monitor's fds 4 and 5. A gone init: the container is not running."""
    init_fd = open_pidfd(join.init_pid, join.init_start_time)
    if init_fd is None:
        raise ConflictError("the container's init has exited")
    try:
        init_fd = _above_targets(init_fd)
        plan_fd = _above_targets(os.memfd_create("garden-plan", os.MFD_CLOEXEC))
        try:
            view = memoryview(plan)
            while view:
                view = view[os.write(plan_fd, view) :]
        except BaseException:
            os.close(plan_fd)
            raise
    except BaseException:
        os.close(init_fd)
        raise
    return plan_fd, init_fd


def _above_targets(fd: int, lowest: int = 8) -> int:
    """`fd` moved to a number no dup2 of `_posix_spawn` writes to (a low one could be
    overwritten by an earlier action before it is copied)."""
    if fd >= lowest:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    finally:
        os.close(fd)


def _posix_spawn(
    exe: str, argv: list[str], out: int, err: int, sync: int, extra: list[int] | None = None
) -> int:
    """Start garden-monitor with /dev/null, `out`, `err`, `sync` and then `extra` as its fds
    0-3 and on, in a session of its own; its pid. vfork + exec of a small static binary:
    ~0.2 ms in the trio thread, less than a hop to a worker thread and back."""
    return os.posix_spawn(
        exe,
        argv,
        {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out, 1),
            (os.POSIX_SPAWN_DUP2, err, 2),
            (os.POSIX_SPAWN_DUP2, sync, 3),
            *((os.POSIX_SPAWN_DUP2, fd, 4 + i) for i, fd in enumerate(extra or ())),
        ],
        setsid=True,
        setsigdef=(_signal.SIGPIPE, _signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP),
    )


async def _read_sync_line(fd: int) -> str:
    """The first line written to the pipe `fd` ("" if it closed first)."""
    os.set_blocking(fd, False)
    buf = b""
    while b"\n" not in buf:
        try:
            chunk = os.read(fd, 256)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            continue
        if not chunk:
            break
        buf += chunk
    await trio.lowlevel.cancel_shielded_checkpoint()
    return buf.partition(b"\n")[0].decode(errors="replace")


async def _read_sync_message(fd: int) -> dict[str, Any]:
    """The first JSON line conmon writes to the sync pipe ({} if it closed the pipe first)."""
    stream = trio.lowlevel.FdStream(os.dup(fd))
    buf = b""
    try:
        while b"\n" not in buf:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            buf += chunk
    finally:
        await stream.aclose()
    line = buf.partition(b"\n")[0]
    if not line:
        return {}
    try:
        msg = json.loads(line)
    except ValueError:
        return {"message": line.decode(errors="replace")}
    return msg if isinstance(msg, dict) else {}


_RUNC_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


def _spawn_error(message: str) -> KernelError | ExecutableNotFoundError:
    found = _RUNC_MSG.findall(message)
    text = (found[-1].encode().decode("unicode_escape") if found else message).strip()
    low = text.lower()
    if "exec:" in low and ("no such file" in low or "not found" in low or "permission" in low):
        return ExecutableNotFoundError(text or "executable not found")
    if low.startswith("executable file") and "not found" in low:  # crun's wording
        return ExecutableNotFoundError(text)
    return RuntimeFailedError("runc exec", text or "(no message)")


def _runtime_stderr(pdir: Path) -> str:
    for name in ("conmon.err", STDERR):  # with passthrough conmon's stderr is the process's
        try:
            return (pdir / name).read_text(errors="replace").strip()[-2000:]
        except OSError:
            continue
    return ""


def _append(path: Path) -> IO[bytes]:
    """The file opened for appending (O_APPEND: writers that share it never overwrite, and a
    freed front never makes a writer write into the hole)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC), "ab")


def read_exit_status(facts: SpawnedProcess) -> int | None:
    """The exit status conmon wrote (128+signal for a signal), None while it has not."""
    try:
        text = facts.exit_path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)  # conmon 2.1.6 writes 128+signal itself (137 SIGKILL, 143 SIGTERM)
    except ValueError as e:
        raise KernelError(f"read exit status {facts.exit_path}", f"not a number: {text!r}") from e


def status(facts: SpawnedProcess) -> ProcessStatus:
    """ "exited" once the exit file exists, "running" while conmon lives, else "lost"."""
    if facts.exit_path.exists():
        return "exited"
    if is_running(facts.conmon_pid, facts.conmon_start_time):
        return "running"
    return "exited" if facts.exit_path.exists() else "lost"  # it may have just finished


def is_running(pid: int, start_time: int | None) -> bool:
    """True if `pid` is still the process that started at `start_time` and not a zombie."""
    if start_time is None:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = data[data.rfind(b")") + 2 :].split()  # fields 3.. (comm may hold anything)
    return len(fields) > 19 and fields[0] != b"Z" and int(fields[19]) == start_time


async def wait_exit(facts: SpawnedProcess) -> int:
    """Wait until the process has exited and conmon is done; its exit status. Removes the
    socket link. `MonitorLostError` if conmon died without writing a status."""
    await _wait_monitor(facts)
    code = read_exit_status(facts)
    _remove_link(Path(facts.socket_link), Path(facts.process_dir))
    if code is None:
        raise MonitorLostError(
            f"wait for process in {facts.process_dir}", "conmon exited without an exit status"
        )
    return code


def signal(facts: SpawnedProcess, signum: int) -> bool:
    """Send `signum` to the process; False if it has already exited (never hits a reused pid)."""
    if facts.pid_start_time is None:
        return False
    fd = open_pidfd(facts.pid, facts.pid_start_time)
    if fd is None:
        return False
    try:
        return signal_pidfd(fd, signum)
    finally:
        os.close(fd)


def resize(facts: SpawnedProcess, rows: int, cols: int) -> bool:
    """Set a TTY process's window size; False if conmon is gone (or it has no TTY)."""
    if not facts.tty or rows <= 0 or cols <= 0:
        return False
    try:
        fd = os.open(Path(facts.process_dir) / "ctl", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    try:
        os.write(fd, f"1 {rows} {cols}\n".encode())
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


class StdinStream(trio.abc.SendStream):
    """The process's stdin through conmon's attach socket; `aclose()` sends EOF."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._lock = trio.StrictFIFOLock()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._lock:
            view = memoryview(data)
            if not view:
                await trio.lowlevel.checkpoint()
            try:
                for start in range(0, len(view), _STDIN_PACKET):
                    packet = view[start : start + _STDIN_PACKET]
                    while packet:
                        packet = packet[await self._sock.send(packet) :]
            except OSError as e:
                raise trio.BrokenResourceError(f"stdin closed: {e}") from e

    async def wait_send_all_might_not_block(self) -> None:
        await self._sock.wait_writable()

    async def aclose(self) -> None:
        self._sock.close()  # conmon reads EOF and closes the process's stdin
        await trio.lowlevel.checkpoint()


async def open_stdin(facts: SpawnedProcess) -> StdinStream:
    """Connect to the process's stdin. `InvalidRequestError` if it was spawned without stdin,
    `ConflictError` once it has exited."""
    if not facts.stdin:
        raise InvalidRequestError("process was started without stdin")
    dir_fd = os.open(facts.process_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        await sock.connect(f"/proc/self/fd/{dir_fd}/attach")  # any length of process_dir
        sock.shutdown(socket.SHUT_RD)  # we never read output here: conmon must not block on us
    except OSError as e:
        sock.close()
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise ConflictError(f"process has exited: {e.strerror}") from e
        raise KernelError("connect to conmon attach socket", e) from e
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dir_fd)
    return StdinStream(sock)


async def cleanup(facts: SpawnedProcess, *, timeout: float = _CLEANUP_TIMEOUT) -> None:
    """Kill the process if it still runs, wait for its conmon (shielded, at most `timeout`
    s, then conmon is SIGKILLed too) and remove the socket link and the process dir."""
    with trio.CancelScope(shield=True):
        with trio.move_on_after(timeout):
            signal(facts, _signal.SIGKILL)
            await _wait_monitor(facts)
        if status(facts) == "running":
            fd = open_pidfd(facts.conmon_pid, facts.conmon_start_time)
            if fd is not None:
                try:
                    signal_pidfd(fd, _signal.SIGKILL)
                    with trio.move_on_after(1.0):
                        await trio.lowlevel.wait_readable(fd)
                        _reap(fd)
                finally:
                    trio.lowlevel.notify_closing(fd)
                    os.close(fd)
        _remove_link(Path(facts.socket_link), Path(facts.process_dir))
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(facts.process_dir)


async def _wait_monitor(facts: SpawnedProcess) -> None:
    """Until the process's monitor has exited (reaped if it is our child)."""
    fd = None
    if facts.conmon_start_time is not None:
        fd = open_pidfd(facts.conmon_pid, facts.conmon_start_time)
    if fd is None:
        await trio.lowlevel.checkpoint()
        return
    try:
        await trio.lowlevel.wait_readable(fd)
        _reap(fd)
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


def _remove_link(link: Path, target: Path) -> None:
    """Remove conmon's socket-dir symlink if it still points at `target`."""
    if link == Path(""):  # garden-monitor makes none
        return
    try:
        if os.readlink(link) == str(target):
            link.unlink()
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        if e.errno != errno.EINVAL:  # not a symlink: not ours
            raise
