"""Request/reply over an actor's command channel, that cannot hang a caller.

A caller `await mailbox.call(command)`; the actor's loop takes `(command, reply)` pairs one at a
time from `mailbox.receive` and settles each reply. When the actor's loop ends, for whatever
reason, `close()` fails every reply still queued and every later call with the error given, so
a caller never waits for an actor that is gone.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar, final

import outcome
import trio

from garden.errors import GardenError, ServiceUnavailableError

C = TypeVar("C")


@final
class Reply:
    """One pending answer: settled once, waited on by the caller."""

    __slots__ = ("_done", "_outcome")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._outcome: outcome.Outcome[object] | None = None

    def settle(self, result: outcome.Outcome[object]) -> None:
        if self._outcome is None:
            self._outcome = result
            self._done.set()

    def succeed(self, value: object) -> None:
        self.settle(outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        self.settle(outcome.Error(error))

    async def wait(self) -> object:
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome.unwrap()


@final
class Mailbox(Generic[C]):
    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[C, Reply]](math.inf)
        self._closed_with: Callable[[], GardenError] | None = None

    async def call(self, command: C) -> object:
        """Queue `command` and wait for the actor's answer."""
        reply = Reply()
        try:
            self._send.send_nowait((command, reply))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._error() from None
        return await reply.wait()

    async def commands(self) -> AsyncIterator[tuple[C, Reply]]:
        async for item in self._receive:
            yield item

    def close(self, error: Callable[[], GardenError] | None = None) -> None:
        """No more commands: fail what is queued and every later call with `error()`."""
        self._closed_with = error or _gone
        self._send.close()
        while True:
            try:
                _, reply = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            reply.fail(self._error())

    def _error(self) -> GardenError:
        assert self._closed_with is not None
        return self._closed_with()


def _gone() -> GardenError:
    return ServiceUnavailableError("the container's actor has stopped")
