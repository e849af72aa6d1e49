"""File transfers into and out of containers: which container, whether it may be touched now,
and keeping it alive while the bytes move.

A transfer does not go through the container's mailbox: it can take minutes, and the actor would
answer nothing else meanwhile. It takes the facts it needs from the state (rootfs path, uid base,
init pid), holds the grace reaper (a container is never reaped mid-transfer) and registers with
`Transfers`. A destroy first cancels the container's transfers and waits for them to end (a
cancelled upload removes its unfinished file; its client gets 404 "destroyed during the
transfer"; a cancelled download's response is cut off, never completed), and only then tears the
container down; a transfer that starts while a destroy runs is refused (404). Nothing is
recorded in the event log: file contents are not server state.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Final, Literal, final

import trio

from garden.actors.ports import ContainerFiles, FileSource
from garden.errors import ConflictError, ContainerNotFoundError, ServiceUnavailableError
from garden.linux.plan import ContainerPlan, Started

if TYPE_CHECKING:
    from garden.actors.supervisor import Supervisor

log = logging.getLogger("garden.files")

# How long a destroy waits for the container's cancelled transfers to finish their cleanup.
STOP_TRANSFERS_TIMEOUT: Final = 30.0


@final
class Transfers:
    """The transfers in flight, by handle, and the handles whose destroy is under way."""

    def __init__(self) -> None:
        self._scopes: dict[str, set[trio.CancelScope]] = {}
        self._idle: dict[str, trio.Event] = {}
        self._closing: dict[str, int] = {}

    def count(self, handle: str) -> int:
        return len(self._scopes.get(handle, ()))

    @contextmanager
    def running(self, handle: str) -> Iterator[None]:
        """Register a transfer; raises `ContainerNotFoundError` when a destroy is under way or
        cancels it meanwhile."""
        if self._closing.get(handle):
            raise ContainerNotFoundError(handle)
        with trio.CancelScope() as scope:
            scopes = self._scopes.setdefault(handle, set())
            scopes.add(scope)
            self._idle.setdefault(handle, trio.Event())
            try:
                yield
            finally:
                scopes.discard(scope)
                if not scopes:
                    del self._scopes[handle]
                    self._idle.pop(handle).set()
        if scope.cancelled_caught:
            error = ContainerNotFoundError(handle)
            error.message = f"container {handle} was destroyed during the transfer"
            error.args = (error.message,)
            raise error

    @asynccontextmanager
    async def closed(self, handle: str) -> AsyncIterator[None]:
        """While inside, no transfer of `handle` runs: those running are cancelled and waited
        for (at most `STOP_TRANSFERS_TIMEOUT`), new ones are refused."""
        self._closing[handle] = self._closing.get(handle, 0) + 1
        try:
            for scope in self._scopes.get(handle, ()):
                scope.cancel()
            idle = self._idle.get(handle)
            if idle is not None:
                log.info("transfers-cancelled handle=%s count=%d", handle, self.count(handle))
                with trio.move_on_after(STOP_TRANSFERS_TIMEOUT):
                    await idle.wait()
                if self.count(handle):
                    log.warning("transfers-still-running handle=%s", handle)
            yield
        finally:
            left = self._closing[handle] - 1
            if left:
                self._closing[handle] = left
            else:
                del self._closing[handle]


@final
class Download:
    """An opened source and what the response needs to know before its first byte."""

    def __init__(self, service: FileService, handle: str, path: str, source: FileSource) -> None:
        self.kind: Literal["file", "dir"] = source.kind
        self.size = source.size
        self._service = service
        self._handle = handle
        self._path = path
        self._source = source

    def close(self) -> None:
        self._source.close()

    @trio.as_safe_channel
    async def stream(self) -> AsyncGenerator[bytes, None]:
        """The bytes, while holding the container like any transfer (so a destroy cuts the
        stream off instead of racing it)."""
        sent = 0
        try:
            async with self._service.transfer(self._handle), self._source.stream() as blocks:
                async for block in blocks:
                    yield block
                    sent += len(block)
        except BaseException as exc:
            log.info(
                "files-out-cut handle=%s path=%s bytes=%d reason=%s",
                self._handle,
                self._path,
                sent,
                type(exc).__name__,
            )
            raise
        finally:
            self._source.close()
        log.info(
            "files-out handle=%s path=%s kind=%s bytes=%d",
            self._handle,
            self._path,
            self.kind,
            sent,
        )


@final
class FileService:
    """What the HTTP routes call to move files; `port` does the kernel work."""

    def __init__(self, sup: Supervisor, port: ContainerFiles | None) -> None:
        self._sup = sup
        self._port = port

    @property
    def port(self) -> ContainerFiles:
        if self._port is None:
            raise ServiceUnavailableError("this server has no file transfers configured")
        return self._port

    @asynccontextmanager
    async def transfer(self, handle: str) -> AsyncIterator[tuple[ContainerPlan, Started | None]]:
        """Hold `handle` for one transfer; yields the facts the kernel side needs."""
        record = self._sup.container(handle)
        if record.phase == "destroying":
            raise ContainerNotFoundError(handle)
        if record.phase == "creating":
            raise ConflictError(f"container {handle} is still being created", handle=handle)
        with self._sup.reaper.hold(handle), self._sup.transfers.running(handle):
            yield record.plan(), record.started()

    async def stream_in(
        self,
        handle: str,
        *,
        path: str,
        user: str,
        tar: bool,
        body: AsyncIterable[bytes],
        size: int | None = None,
    ) -> None:
        port = self.port
        async with self.transfer(handle) as (plan, started):
            await port.stream_in(plan, started, path=path, user=user, tar=tar, body=body, size=size)

    async def open_out(self, handle: str, *, path: str, user: str) -> Download:
        """Open the source now (so a missing one is a 404 before the response starts); the
        transfer itself is held while `Download.stream` runs."""
        port = self.port
        async with self.transfer(handle) as (plan, started):
            source = await port.open_source(plan, started, path=path, user=user)
        return Download(self, handle, path, source)
