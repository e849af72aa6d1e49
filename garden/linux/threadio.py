"""Byte streams between trio and one worker thread, in blocks of about 1 MiB through bounded
channels, so that memory stays flat whatever the size and each side waits for the other
(backpressure both ways).

- In (a request body into a thread): `feed` runs in trio and gathers the body's chunks into
  blocks; the thread reads them with `BodyReader` (block by block for writev, or exact sizes
  as views of the received chunks for tar). When the body fails (the client went away), the
  thread's next read raises that error.
- Out (a thread's output to trio): `produced_blocks(produce)` runs `produce(writer)` in a thread
  and yields the blocks it writes; a consumer that stops early cancels the thread at its next
  write (`trio.from_thread.run` raises `trio.Cancelled` there).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterator
from typing import Final, final

import trio

BLOCK: Final = 1 << 20
QUEUE: Final = 4  # blocks in flight between the two sides
_MAX_IOVECS: Final = 64  # a block of more chunks than this is joined first (writev takes 1024)


@final
class BodyReader:
    """A request body as a worker thread sees it. Use only from a thread that trio started
    (`trio.to_thread.run_sync`), and either `next_block` (whole blocks, for writev) or
    `pieces`/`read_exact`/`at_end` (exact sizes, for tar), not both."""

    def __init__(self, receive: trio.MemoryReceiveChannel[list[bytes]]) -> None:
        self._receive = receive
        self._chunks: list[bytes] = []
        self._index = 0
        self._offset = 0
        self.error: BaseException | None = None  # set by `feed` when the body failed
        self.bytes_read = 0

    def next_block(self) -> list[bytes] | None:
        """The next block of chunks, None at the end of the body."""
        try:
            block = trio.from_thread.run(self._receive.receive)
        except trio.EndOfChannel:
            if self.error is not None:
                raise self.error from None
            return None
        if len(block) > _MAX_IOVECS:
            block = [b"".join(block)]
        self.bytes_read += sum(map(len, block))
        return block

    def pieces(self, size: int) -> Iterator[memoryview]:
        """Exactly `size` more bytes, as views of the received chunks (no copies); `EOFError`
        if the body ends first."""
        while size > 0:
            if self._index >= len(self._chunks):
                block = self.next_block()
                if block is None:
                    raise EOFError(f"the body ended {size} bytes early")
                self._chunks, self._index, self._offset = block, 0, 0
            chunk = self._chunks[self._index]
            start = self._offset
            take = min(len(chunk) - start, size)
            self._offset += take
            if self._offset == len(chunk):
                self._index += 1
                self._offset = 0
            size -= take
            yield memoryview(chunk)[start : start + take]

    def read_exact(self, size: int) -> bytes:
        return b"".join(self.pieces(size))

    def at_end(self) -> bool:
        """True when nothing is left (waits for the next block to know)."""
        if self._index < len(self._chunks):
            return False
        block = self.next_block()
        if block is None:
            return True
        self._chunks, self._index, self._offset = block, 0, 0
        return False


async def feed(
    body: AsyncIterable[bytes], send: trio.MemorySendChannel[list[bytes]], reader: BodyReader
) -> None:
    """Pass `body` to `reader` in blocks; never raises (but `trio.Cancelled`): a failing body is
    handed to the reader, which raises it in its thread."""
    try:
        pending: list[bytes] = []
        size = 0
        async for chunk in body:
            if not chunk:
                continue
            pending.append(chunk)
            size += len(chunk)
            if size >= BLOCK:
                await send.send(pending)
                pending, size = [], 0
        if pending:
            await send.send(pending)
    except Exception as exc:
        reader.error = exc
    finally:
        send.close()  # after `error` is set: the reader looks at it when the channel ends


@final
class BlockWriter:
    """What a producing thread writes, gathered into blocks and handed to trio (waiting while
    the consumer is behind). The pieces are kept as they come and joined once per block, so
    each block is allocated at its size (a growing bytearray reallocates as it goes and is
    copied once more into the block: two heap chunks of shifting sizes per block)."""

    def __init__(self, send: trio.MemorySendChannel[bytes]) -> None:
        self._send = send
        self._pending: list[bytes] = []
        self._size = 0
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        if len(data) >= BLOCK:
            self.flush()
            self._emit(bytes(data))
            return
        if data:
            self._pending.append(bytes(data))  # a copy only of what is not `bytes` already
            self._size += len(data)
            if self._size >= BLOCK:
                self.flush()

    def flush(self) -> None:
        if self._pending:
            block = b"".join(self._pending)  # the one piece itself when there is one
            self._pending, self._size = [], 0
            self._emit(block)

    def _emit(self, block: bytes) -> None:
        self.bytes_written += len(block)
        trio.from_thread.run(self._send.send, block)


@trio.as_safe_channel
async def produced_blocks(
    produce: Callable[[BlockWriter], None], limiter: trio.CapacityLimiter | None = None
) -> AsyncGenerator[bytes, None]:
    """Run `produce(writer)` in a worker thread (of `limiter`'s, else trio's default pool) and
    yield the blocks it writes, in order; its error is raised here after the blocks written
    before it."""
    send, receive = trio.open_memory_channel[bytes](QUEUE)

    def run() -> None:
        writer = BlockWriter(send)
        produce(writer)
        writer.flush()

    async def run_thread() -> None:
        with send:
            await trio.to_thread.run_sync(run, limiter=limiter)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_thread)
        async with receive:
            async for block in receive:
                yield block
