"""`AsyncClient`: the trio client on httpx, with the same methods as `garden.client.Client`.

    import trio
    from garden.client import AsyncClient
    from garden.api import ProcessSpec

    async def main() -> None:
        async with AsyncClient() as c:
            handle = await c.create()
            async with await c.run(handle, ProcessSpec(path="sh", args=["-c", "echo hi"])) as p:
                async for payload in p:
                    print(payload.source, payload.data)
            print("exit", p.exit_status)
            await c.destroy(handle)

    trio.run(main)

`transport` replaces the network (e.g. `httpx.MockTransport` in tests). Errors are raised as
the `garden.errors` class of the answer's wire `type`; a failed connection is
`ServerUnreachableError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, final

import httpx
import msgspec
import trio

from garden.api import (
    BulkInfoEntry,
    BulkMetricsEntry,
    Capacity,
    ContainerInfo,
    ContainerMetrics,
    ContainerSpec,
    NetOutRule,
    PortMapping,
    ProcessPayload,
    ProcessSpec,
    Wire,
)
from garden.client import calls
from garden.client.calls import JSON, NDJSON, OCTETS, TAR, Call
from garden.client.errors import from_response
from garden.client.streams import Collected, Output, ProcessResult, StreamState
from garden.client.sync import USER_AGENT
from garden.client.target import Target, token_from_env
from garden.errors import ServerUnreachableError, UnexpectedResponseError
from garden.events.schema import Record
from garden.images.wire import ImagesReply, ImportLine, PruneReply

if TYPE_CHECKING:
    from garden.client.aio_terminal import AsyncTerminal

T = TypeVar("T")
L = TypeVar("L", bound=Wire)

AsyncBody = bytes | Iterable[bytes] | AsyncIterable[bytes]


async def _as_async(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
        await trio.lowlevel.checkpoint()


def _content(data: AsyncBody | None) -> bytes | AsyncIterable[bytes] | None:
    if data is None or isinstance(data, bytes | AsyncIterable):
        return data
    return _as_async(data)


async def _lines(resp: httpx.Response) -> AsyncIterator[bytes]:
    """The body's lines, without their newline. A long line that arrives in many pieces is
    joined once at its end (adding each piece to the pending bytes copied them all again: a
    1.4 MB line of base64 output came in ~20 pieces)."""
    pending: list[bytes] = []
    async for chunk in resp.aiter_bytes():
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            if pending:
                pending.append(chunk[start:nl])
                yield b"".join(pending)
                pending.clear()
            else:
                yield chunk[start:nl]
            start = nl + 1
        if start < len(chunk):
            pending.append(chunk[start:] if start else chunk)
    if pending:
        yield b"".join(pending)


@final
class AsyncClient:
    def __init__(
        self,
        target: str | Target | None = None,
        *,
        token: str | None = None,
        token_file: str | None = None,
        timeout: float | None = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.target = target if isinstance(target, Target) else Target.parse(target)
        self.timeout = timeout
        self._token = token_from_env(token, token_file)
        if transport is None and self.target.socket_path:
            transport = httpx.AsyncHTTPTransport(uds=self.target.socket_path)
        headers = {"User-Agent": USER_AGENT}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self._http = httpx.AsyncClient(
            base_url=self.target.base_url,
            transport=transport,
            timeout=httpx.Timeout(timeout),
            headers=headers,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- plumbing ---

    async def _send(
        self,
        method: str,
        path: str,
        body: AsyncBody | None = None,
        *,
        content_type: str | None = None,
        accept: str = JSON,
        streaming: bool = False,
    ) -> httpx.Response:
        """Send and read the head; the caller reads (and closes) the body."""
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        timeout = (
            httpx.Timeout(self.timeout, read=None) if streaming else httpx.Timeout(self.timeout)
        )
        request = self._http.build_request(
            method, path, content=_content(body), headers=headers, timeout=timeout
        )
        try:
            resp = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"{self.target}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= resp.status_code < 300:
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
            raise from_response(resp.status_code, content)
        return resp

    async def _read(self, resp: httpx.Response) -> bytes:
        try:
            return await resp.aread()
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"{self.target}: {type(exc).__name__}: {exc}") from exc
        finally:
            await resp.aclose()

    async def _call(self, call: Call[T]) -> T:
        resp = await self._send(call.method, call.path, call.body, content_type=call.content_type)
        content = await self._read(resp)
        try:
            return call.decode(content)
        except msgspec.DecodeError as exc:
            raise UnexpectedResponseError(f"{call}: unexpected answer: {exc}") from exc

    # --- server ---

    async def ping(self) -> None:
        await self._call(calls.ping())

    async def capacity(self) -> Capacity:
        return await self._call(calls.capacity())

    async def server_metrics(self) -> str:
        return await self._call(calls.server_metrics())

    async def openapi(self) -> dict[str, Any]:
        return await self._call(calls.openapi())

    async def images(self) -> ImagesReply:
        return await self._call(calls.images())

    async def prune_images(self) -> PruneReply:
        return await self._call(calls.prune_images())

    async def import_image(self, rootfs: str) -> list[ImportLine]:
        """`POST /images`: every line of the answer (progress, then the image or an error)."""
        resp = await self._send(
            "POST",
            "/images",
            calls.import_image_body(rootfs),
            content_type=JSON,
            accept=NDJSON,
            streaming=True,
        )
        try:
            return [calls.decode_import_line(line) async for line in _lines(resp) if line.strip()]
        finally:
            with trio.CancelScope(shield=True):
                await resp.aclose()

    async def events(self, since: int = 0, *, follow: bool = False) -> AsyncEventStream:
        resp = await self._send(
            "GET", calls.events_path(since, follow), accept=NDJSON, streaming=True
        )
        return AsyncEventStream(resp)

    # --- containers ---

    async def handles(self, properties: Mapping[str, str] | None = None) -> list[str]:
        return await self._call(calls.handles(properties))

    async def create(self, spec: ContainerSpec | None = None) -> str:
        return await self._call(calls.create(spec or ContainerSpec()))

    async def info(self, handle: str) -> ContainerInfo:
        return await self._call(calls.info(handle))

    async def bulk_info(self, handles: Iterable[str]) -> dict[str, BulkInfoEntry]:
        return await self._call(calls.bulk_info(handles))

    async def bulk_metrics(self, handles: Iterable[str]) -> dict[str, BulkMetricsEntry]:
        return await self._call(calls.bulk_metrics(handles))

    async def metrics(self, handle: str) -> ContainerMetrics:
        return await self._call(calls.metrics(handle))

    async def destroy(self, handle: str) -> None:
        await self._call(calls.destroy(handle))

    async def stop(self, handle: str, *, kill: bool = False) -> None:
        await self._call(calls.stop(handle, kill))

    async def set_grace_time(self, handle: str, seconds: float) -> None:
        await self._call(calls.set_grace_time(handle, seconds))

    # --- properties ---

    async def properties(self, handle: str) -> dict[str, str]:
        return await self._call(calls.properties(handle))

    async def get_property(self, handle: str, key: str) -> str:
        return await self._call(calls.get_property(handle, key))

    async def set_property(self, handle: str, key: str, value: str) -> None:
        await self._call(calls.set_property(handle, key, value))

    async def delete_property(self, handle: str, key: str) -> None:
        await self._call(calls.delete_property(handle, key))

    # --- limits and networking ---

    async def get_limit(self, handle: str, kind: type[L]) -> L:
        return await self._call(calls.get_limit(handle, kind))

    async def set_limit(self, handle: str, limit: L) -> L:
        return await self._call(calls.set_limit(handle, limit))

    async def net_in(self, handle: str, host_port: int = 0, container_port: int = 0) -> PortMapping:
        return await self._call(calls.net_in(handle, host_port, container_port))

    async def net_out(self, handle: str, rule: NetOutRule) -> None:
        await self._call(calls.net_out(handle, rule))

    # --- files ---

    async def stream_in(
        self, handle: str, destination: str, data: AsyncBody, *, tar: bool = False
    ) -> None:
        resp = await self._send(
            "PUT",
            calls.files_path(handle, destination=destination),
            data,
            content_type=TAR if tar else OCTETS,
        )
        await self._read(resp)

    async def stream_out(self, handle: str, source: str) -> AsyncDownload:
        resp = await self._send(
            "GET", calls.files_path(handle, source=source), accept="*/*", streaming=True
        )
        return AsyncDownload(resp)

    # --- processes ---

    async def run(
        self, handle: str, spec: ProcessSpec, *, base64: bool = False
    ) -> AsyncProcessStream:
        resp = await self._send(
            "POST",
            calls.run_path(handle, base64),
            calls.run_body(spec),
            content_type=JSON,
            accept=NDJSON,
            streaming=True,
        )
        return await AsyncProcessStream.open(resp, handle, base64)

    async def attach(
        self, handle: str, process_id: str, *, base64: bool = False
    ) -> AsyncProcessStream:
        resp = await self._send(
            "GET", calls.attach_path(handle, process_id, base64), accept=NDJSON, streaming=True
        )
        return await AsyncProcessStream.open(resp, handle, base64)

    async def stdin(self, handle: str, process_id: str, data: AsyncBody) -> None:
        resp = await self._send(
            "PUT", calls.stdin_path(handle, process_id), data, content_type=OCTETS
        )
        await self._read(resp)

    async def signal(self, handle: str, process_id: str, signal: str | int) -> None:
        await self._call(calls.signal(handle, process_id, signal))

    async def terminal(self, handle: str, process_id: str) -> AsyncTerminal:
        """`GET .../processes/:pid/ws`: the process's terminal (`garden.client.aio_terminal`)."""
        from garden.client.aio_terminal import AsyncTerminal

        headers = [("User-Agent", USER_AGENT)]
        if self._token:
            headers.append(("Authorization", f"Bearer {self._token}"))
        return await AsyncTerminal.open(
            self.target, calls.terminal_path(handle, process_id), headers, self.timeout
        )


@final
class AsyncProcessStream:
    """`async for payload in stream` (output only); `outputs()`, `wait()`, `result()`."""

    def __init__(self, resp: httpx.Response, state: StreamState) -> None:
        self._resp = resp
        self._state = state
        self._lines = _lines(resp)
        self._first: list[ProcessPayload] = []

    @classmethod
    async def open(cls, resp: httpx.Response, handle: str, base64: bool) -> AsyncProcessStream:
        self = cls(resp, StreamState(handle, base64))
        try:
            async for line in self._lines:
                if (p := self._state.on_line(line)) is not None:
                    self._first.append(p)
                if self._state.process_id:
                    break
            self._state.check_named()
        except httpx.TransportError as exc:
            await resp.aclose()
            raise ServerUnreachableError(f"process stream broke: {exc}") from exc
        except BaseException:
            await resp.aclose()
            raise
        return self

    @property
    def process_id(self) -> str:
        return self._state.process_id

    @property
    def exit_status(self) -> int | None:
        return self._state.exit_status

    async def __aiter__(self) -> AsyncIterator[ProcessPayload]:
        async for p in self._follow(as_output=False):
            assert not isinstance(p, Output)
            yield p

    async def _follow(self, *, as_output: bool) -> AsyncIterator[ProcessPayload | Output]:
        on_line = self._state.on_output_line if as_output else self._state.on_line
        try:
            for first in self._first:
                yield first
            self._first.clear()
            if self._state.exit_status is None:
                async for line in self._lines:
                    if (p := on_line(line)) is not None:
                        yield p
                    if self._state.exit_status is not None:
                        break
            self._state.check_ended()
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"process stream broke: {exc}") from exc
        finally:
            with trio.CancelScope(shield=True):
                await self._resp.aclose()

    async def outputs(self) -> AsyncIterator[Output]:
        """The output as exact bytes (base64 lines decoded straight from the line)."""
        async for p in self._follow(as_output=True):
            yield self._state.output(p)

    async def wait(self) -> int:
        async for _ in self:
            pass
        return self._state.check_ended()

    async def result(self) -> ProcessResult:
        collected = Collected()
        async for out in self.outputs():
            collected.add(out)
        return collected.result(self.process_id, self._state.check_ended())

    async def aclose(self) -> None:
        await self._resp.aclose()

    async def __aenter__(self) -> AsyncProcessStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@final
class AsyncDownload:
    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.content_type = str(resp.headers.get("content-type", OCTETS)).split(";")[0].strip()

    @property
    def is_tar(self) -> bool:
        return self.content_type == TAR

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_bytes():
                yield chunk
        finally:
            with trio.CancelScope(shield=True):
                await self._resp.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        await self._resp.aclose()

    async def __aenter__(self) -> AsyncDownload:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@final
class AsyncEventStream:
    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp

    async def lines(self) -> AsyncIterator[bytes]:
        try:
            async for line in _lines(self._resp):
                if line.strip():
                    yield line
        finally:
            with trio.CancelScope(shield=True):
                await self._resp.aclose()

    async def __aiter__(self) -> AsyncIterator[Record]:
        decoder = msgspec.json.Decoder(Record)
        async for line in self.lines():
            try:
                yield decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise UnexpectedResponseError(f"not an event record: {exc}") from exc

    async def aclose(self) -> None:
        await self._resp.aclose()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
