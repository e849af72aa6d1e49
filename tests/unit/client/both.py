"""Run one test body against both clients: `Client` (blocking, driven from a worker thread)
and `AsyncClient`, through the same awaitable calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, final

import trio

from garden.client import AsyncClient, Client


@final
class SyncAsAsync:
    """`await c.info(h)` runs `Client.info(h)` in a worker thread."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        fn = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))

        return call


@asynccontextmanager
async def open_client(kind: str, target: str) -> AsyncIterator[Any]:
    if kind == "sync":
        client = Client(target, timeout=10)
        try:
            yield SyncAsAsync(client)
        finally:
            client.close()
    else:
        async with AsyncClient(target, timeout=10) as aclient:
            yield aclient
