"""A fake `ContainerFiles` for unit tests of the file routes: uploads land in memory, downloads
come from memory, and a test can pause, fail or watch a transfer."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from contextlib import AbstractAsyncContextManager
from typing import Literal, final

import trio

from garden.errors import FileNotFoundInContainerError, GardenError
from garden.linux.plan import ContainerPlan, Started


@final
class FakeSource:
    def __init__(self, kind: Literal["file", "dir"], blocks: list[bytes], fail_after: int | None):
        self.kind: Literal["file", "dir"] = kind
        self.size: int | None = sum(map(len, blocks)) if kind == "file" else None
        self.blocks = blocks
        self.fail_after = fail_after
        self.closed = False
        self.first_sent = trio.Event()
        self.gate: trio.Event | None = None  # awaited before every block after the first

    def stream(self) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[bytes]]:
        return self._stream()

    @trio.as_safe_channel
    async def _stream(self) -> AsyncGenerator[bytes, None]:
        try:
            for i, block in enumerate(self.blocks):
                if self.fail_after is not None and i >= self.fail_after:
                    raise OSError(5, "disk on fire")
                if i and self.gate is not None:
                    await self.gate.wait()
                yield block
                self.first_sent.set()
        finally:
            self.closed = True

    def close(self) -> None:
        self.closed = True


@final
class FakeFiles:
    def __init__(self) -> None:
        self.written: dict[str, bytes] = {}
        self.calls: list[tuple[str, str, str, bool]] = []
        self.sources: dict[str, FakeSource] = {}
        self.fail_in: GardenError | None = None  # raised before reading the body
        self.pause_after_first_chunk: trio.Event | None = None
        self.first_chunk_read = trio.Event()
        self.ended: BaseException | None = None  # how the last upload ended
        self.ended_badly = trio.Event()
        self.opened: list[FakeSource] = []

    def add_source(
        self,
        path: str,
        kind: Literal["file", "dir"],
        blocks: list[bytes],
        fail_after: int | None = None,
    ) -> None:
        self.sources[path] = FakeSource(kind, blocks, fail_after)

    async def stream_in(
        self,
        plan: ContainerPlan,
        started: Started | None,
        *,
        path: str,
        user: str,
        tar: bool,
        body: AsyncIterable[bytes],
        size: int | None = None,
    ) -> None:
        self.calls.append((plan.handle, path, user, tar))
        if self.fail_in is not None:
            raise self.fail_in
        data = bytearray()
        try:
            async for chunk in body:
                data += chunk
                if not self.first_chunk_read.is_set():
                    self.first_chunk_read.set()
                    if self.pause_after_first_chunk is not None:
                        await self.pause_after_first_chunk.wait()
        except BaseException as exc:
            self.ended = exc
            self.ended_badly.set()
            raise
        self.written[path] = bytes(data)

    async def open_source(
        self, plan: ContainerPlan, started: Started | None, *, path: str, user: str
    ) -> FakeSource:
        await trio.lowlevel.checkpoint()
        source = self.sources.get(path)
        if source is None:
            raise FileNotFoundInContainerError(f"{path}: no such file or directory")
        self.opened.append(source)
        return source
