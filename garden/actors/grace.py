"""The grace-time reaper: destroys containers that nobody has touched for their grace time.

Every request that names a container `touch`es it; an open process stream or attach `hold`s it
(a held container is never reaped; its clock restarts when the last hold ends). The reaper sleeps
until the earliest deadline, or until a change makes it look again. Clocks are kept in memory:
after a server restart every container's clock starts anew.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import final

import trio

log = logging.getLogger("garden.grace")


@final
class GraceReaper:
    def __init__(self, expire: Callable[[str], Awaitable[None]]) -> None:
        self._expire = expire
        self._grace: dict[str, float] = {}
        self._touched: dict[str, float] = {}
        self._holds: dict[str, int] = {}
        self._changed = trio.Event()

    def watch(self, handle: str, grace_time: float) -> None:
        """Start (or change) the clock of `handle`; 0 means never reaped."""
        self._grace[handle] = grace_time
        self._touched[handle] = trio.current_time()
        self._changed.set()

    def forget(self, handle: str) -> None:
        self._grace.pop(handle, None)
        self._touched.pop(handle, None)
        self._holds.pop(handle, None)

    def touch(self, handle: str) -> None:
        if handle in self._touched:
            self._touched[handle] = trio.current_time()

    @contextmanager
    def hold(self, handle: str) -> Iterator[None]:
        self._holds[handle] = self._holds.get(handle, 0) + 1
        try:
            yield
        finally:
            left = self._holds.get(handle, 0) - 1
            if left > 0:
                self._holds[handle] = left
            else:
                self._holds.pop(handle, None)
                self.touch(handle)
                self._changed.set()

    def deadline(self, handle: str) -> float:
        grace = self._grace.get(handle, 0.0)
        if grace <= 0 or self._holds.get(handle):
            return math.inf
        return self._touched[handle] + grace

    def expired(self, now: float) -> list[str]:
        return [h for h in self._grace if self.deadline(h) <= now]

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                next_deadline = min((self.deadline(h) for h in self._grace), default=math.inf)
                with trio.move_on_at(next_deadline):
                    await self._changed.wait()
                self._changed = trio.Event()
                for handle in self.expired(trio.current_time()):
                    log.info("grace-expired handle=%s", handle)
                    self.forget(handle)
                    nursery.start_soon(self._expire, handle)
