"""The Python client of the Garden API: `Client` (blocking, used by the CLI) and
`AsyncClient` (trio, on httpx), one method per route of API.md, answers as the msgspec types
of `garden.api`, errors as the classes of `garden.errors`. docs/client.md has the guide.

`garden.client` imports neither httpx nor trio: `AsyncClient` is loaded on first use, so the
CLI starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from garden.client.streams import Output, ProcessResult
from garden.client.sync import Client, Download, EventStream, ProcessStream
from garden.client.target import DEFAULT_TARGET, TARGET_ENV, TOKEN_ENV, TOKEN_FILE_ENV, Target

if TYPE_CHECKING:
    from garden.client.aio import AsyncClient, AsyncDownload, AsyncEventStream, AsyncProcessStream

__all__ = [
    "DEFAULT_TARGET",
    "TARGET_ENV",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "AsyncClient",
    "AsyncDownload",
    "AsyncEventStream",
    "AsyncProcessStream",
    "Client",
    "Download",
    "EventStream",
    "Output",
    "ProcessResult",
    "ProcessStream",
    "Target",
]

_LAZY = {"AsyncClient", "AsyncDownload", "AsyncEventStream", "AsyncProcessStream"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from garden.client import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'garden.client' has no attribute {name!r}")
