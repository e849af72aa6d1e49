"""Request/reply over an actor's mailbox, and that a gone actor never hangs a caller."""

from __future__ import annotations

import pytest
import trio

from garden.actors.mailbox import Mailbox
from garden.errors import ContainerNotFoundError, ServiceUnavailableError


async def test_call_gets_the_actors_answer(nursery: trio.Nursery) -> None:
    box: Mailbox[int] = Mailbox()

    async def actor() -> None:
        async for n, reply in box.commands():
            if n < 0:
                reply.fail(ValueError("negative"))
            else:
                reply.succeed(n * 2)

    nursery.start_soon(actor)
    assert await box.call(21) == 42
    with pytest.raises(ValueError, match="negative"):
        await box.call(-1)


async def test_queued_and_later_calls_fail_when_the_actor_stops(nursery: trio.Nursery) -> None:
    box: Mailbox[int] = Mailbox()
    results: list[BaseException] = []

    async def caller() -> None:
        try:
            await box.call(1)
        except ServiceUnavailableError as exc:
            results.append(exc)

    nursery.start_soon(caller)
    nursery.start_soon(caller)
    await trio.testing.wait_all_tasks_blocked()
    box.close()
    await trio.testing.wait_all_tasks_blocked()
    assert len(results) == 2
    with pytest.raises(ServiceUnavailableError):
        await box.call(3)


async def test_close_with_custom_error() -> None:
    box: Mailbox[int] = Mailbox()
    box.close(lambda: ContainerNotFoundError("h"))
    with pytest.raises(ContainerNotFoundError, match="unknown handle: h"):
        await box.call(1)
