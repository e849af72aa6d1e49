"""Routes that move files in and out of containers:

- `PUT /containers/:h/files?destination=P[&user=U]`: the body is the file's bytes (or, with
  `Content-Type: application/x-tar`, a tar unpacked into the directory P), read with
  backpressure (`rawbody`).
- `GET /containers/:h/files?source=P[&user=U]`: the file's bytes (`application/octet-stream`,
  with its length), or a tar of a directory (`application/x-tar`).

Errors are answered before the first byte of a download; a download cut short (the container
destroyed, a read error) ends without its final chunk, so the client sees it incomplete.
"""

from __future__ import annotations

import logging
import re
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import final

import trio
from quart import Response, request
from quart.wrappers.response import ResponseBody
from quart_trio import QuartTrio

from garden.actors.supervisor import Supervisor
from garden.errors import InvalidRequestError
from garden.http import rawbody
from garden.http.respond import json_response

log = logging.getLogger("garden.http")

EMPTY: dict[str, str] = {}
TAR_TYPES = frozenset({"application/x-tar", "application/tar"})
_UPLOAD_PATH = re.compile(r"/containers/[^/]+/files/?")


def _is_upload(method: str, path: str) -> bool:
    return method == "PUT" and _UPLOAD_PATH.fullmatch(path) is not None


def _required(name: str) -> str:
    value = request.args.get(name, "")
    if not value:
        raise InvalidRequestError(f"missing query parameter {name!r}")
    return value


@final
class _ChannelBody(ResponseBody):
    """A response body read from a channel that a context manager opens and closes around the
    send (`trio.as_safe_channel`), so the producer lives exactly as long as the response."""

    def __init__(self, opener: AbstractAsyncContextManager[trio.abc.ReceiveChannel[bytes]]) -> None:
        self._opener = opener
        self._channel: trio.abc.ReceiveChannel[bytes] | None = None

    async def __aenter__(self) -> _ChannelBody:
        self._channel = await self._opener.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._opener.__aexit__(kind, exc, tb)

    def __aiter__(self) -> _ChannelBody:
        return self

    async def __anext__(self) -> bytes:
        assert self._channel is not None
        try:
            return await self._channel.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


def register(app: QuartTrio, sup: Supervisor) -> None:
    rawbody.stream_bodies(app, _is_upload)

    @app.put("/containers/<handle>/files")
    async def stream_in(handle: str) -> Response:
        body = rawbody.current()
        content_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        async with body.drained():
            try:
                await sup.files.stream_in(
                    handle,
                    path=_required("destination"),
                    user=request.args.get("user", ""),
                    tar=content_type in TAR_TYPES,
                    body=body.chunks(),
                    size=request.content_length,
                )
            except rawbody.ClientDisconnected:
                log.info("files-in-client-gone handle=%s bytes=%d", handle, body.bytes_read)
                raise InvalidRequestError("the request body ended early") from None
        return json_response(EMPTY)

    @app.get("/containers/<handle>/files")
    async def stream_out(handle: str) -> Response:
        download = await sup.files.open_out(
            handle, path=_required("source"), user=request.args.get("user", "")
        )
        try:
            if download.kind == "dir":
                response = Response(
                    _ChannelBody(download.stream()), content_type="application/x-tar"
                )
            else:
                response = Response(
                    _ChannelBody(download.stream()), content_type="application/octet-stream"
                )
                response.headers["Content-Length"] = str(download.size or 0)
        except BaseException:
            download.close()
            raise
        response.timeout = None
        return response
