"""Kernel notifications of memory trouble in a cgroup, awaited without polling.

v1 has no memory.events: an eventfd is registered with `cgroup.event_control` against
`memory.oom_control`; the kernel signals it on every OOM in the cgroup, and also when the cgroup
is removed, and before the OOM killer has picked (and counted) a victim: the signal itself is
the OOM, as gdn takes it. v2 changes `memory.events` (a "modified" event for inotify) whenever
a counter in it moves; its `oom` counter says whether one was an OOM.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from types import TracebackType
from typing import Protocol, final

import trio

from garden.errors import CgroupError
from garden.linux.cgroups.base import read_flat_keyed

_libc = ctypes.CDLL(None, use_errno=True)
_IN_MODIFY = 0x2
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


class OomWatch(Protocol):
    async def wait_oom(self) -> bool:
        """Wait for the cgroup's next OOM: True; False if the cgroup was removed instead."""
        ...

    def close(self) -> None: ...


class _FdWatch:
    """An fd that becomes readable on an event; read and discarded after each wake-up."""

    def __init__(self, fd: int, counters: Path) -> None:
        self._fd = fd
        self._counters = counters  # the file that says whether the cgroup still exists
        self._closed = False

    async def _wake(self) -> None:
        await trio.lowlevel.wait_readable(self._fd)
        try:
            os.read(self._fd, 4096)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self._fd)
        os.close(self._fd)

    def __enter__(self) -> _FdWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@final
class EventfdOomWatch(_FdWatch):
    """cgroup v1: eventfd + cgroup.event_control + memory.oom_control."""

    @classmethod
    def open(cls, memory_dir: Path) -> EventfdOomWatch:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(memory_dir / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            os.close(efd)
            raise CgroupError(f"open {memory_dir / 'memory.oom_control'}", e) from e
        try:
            with open(memory_dir / "cgroup.event_control", "w") as f:
                f.write(f"{efd} {ofd}")
        except OSError as e:
            os.close(efd)
            raise CgroupError(f"register an OOM eventfd in {memory_dir}", e) from e
        finally:
            # The registration holds the cgroup and the eventfd, not this file: one fd per
            # watched container is enough.
            os.close(ofd)
        return cls(efd, memory_dir / "memory.oom_control")

    async def wait_oom(self) -> bool:
        await self._wake()
        return self._counters.exists()


@final
class InotifyOomWatch(_FdWatch):
    """cgroup v2 (and fixture trees in tests): inotify IN_MODIFY on memory.events."""

    @classmethod
    def open(cls, cgroup_dir: Path) -> InotifyOomWatch:
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise CgroupError("inotify_init1", os.strerror(ctypes.get_errno()))
        target = str(cgroup_dir / "memory.events").encode()
        if _libc.inotify_add_watch(fd, target, _IN_MODIFY) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise CgroupError(f"inotify_add_watch {cgroup_dir / 'memory.events'}", os.strerror(err))
        return cls(fd, cgroup_dir / "memory.events")

    async def wait_oom(self) -> bool:
        while True:
            await self._wake()
            if not self._counters.exists():
                return False
            counters = read_flat_keyed(self._counters)
            if counters.get("oom", 0) or counters.get("oom_kill", 0):
                return True
