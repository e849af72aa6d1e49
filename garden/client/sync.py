"""`Client`: the blocking client, one method per route of API.md (used by the CLI).

    from garden.client import Client
    from garden.api import ContainerSpec, ProcessSpec

    with Client("http://127.0.0.1:7777") as c:
        handle = c.create(ContainerSpec(properties={"team": "a"}))
        result = c.run(handle, ProcessSpec(path="echo", args=["hi"])).result()
        assert result.stdout == b"hi\\n" and result.exit_status == 0
        c.destroy(handle)

Errors are raised as the `garden.errors` class of the answer's wire `type`. A client is for
one thread at a time; give another thread its own (`clone()`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, TypeVar, final

import msgspec

from garden import __version__
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
from garden.client.http11 import Body, Pool, Response
from garden.client.streams import Collected, Output, ProcessResult, StreamState
from garden.client.target import Target, token_from_env
from garden.errors import UnexpectedResponseError
from garden.images.wire import ImagesReply, ImportLine, PruneReply

if TYPE_CHECKING:
    from garden.client.terminal import Terminal
    from garden.events.schema import Record

T = TypeVar("T")
L = TypeVar("L", bound=Wire)

USER_AGENT = f"garden-trio-client/{__version__}"
FILE_CHUNK = 1024 * 1024


def request_headers(
    token: str | None, content_type: str | None, accept: str
) -> list[tuple[str, str]]:
    headers = [("User-Agent", USER_AGENT), ("Accept", accept)]
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    if content_type:
        headers.append(("Content-Type", content_type))
    return headers


def file_chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(FILE_CHUNK):
        yield chunk


@final
class Client:
    """A blocking client of one server. `target`: see `garden.client.target`."""

    def __init__(
        self,
        target: str | Target | None = None,
        *,
        token: str | None = None,
        token_file: str | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        self.target = target if isinstance(target, Target) else Target.parse(target)
        self.timeout = timeout
        self._token = token_from_env(token, token_file)
        self._pool = Pool(self.target, timeout)

    def clone(self) -> Client:
        """A client of the same server with its own connections (for another thread)."""
        return Client(self.target, token=self._token, timeout=self.timeout)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---

    def _send(
        self,
        method: str,
        path: str,
        body: Body = None,
        *,
        content_type: str | None = None,
        accept: str = JSON,
        streaming: bool = False,
    ) -> Response:
        resp = self._pool.request(
            method,
            self.target.prefix + path,
            request_headers(self._token, content_type, accept),
            body,
            streaming=streaming,
        )
        if not 200 <= resp.status < 300:
            raise from_response(resp.status, resp.read())
        return resp

    def _call(self, call: Call[T]) -> T:
        content = self._send(
            call.method, call.path, call.body, content_type=call.content_type
        ).read()
        try:
            return call.decode(content)
        except msgspec.DecodeError as exc:
            raise UnexpectedResponseError(f"{call}: unexpected answer: {exc}") from exc

    # --- server ---

    def ping(self) -> None:
        self._call(calls.ping())

    def capacity(self) -> Capacity:
        return self._call(calls.capacity())

    def server_metrics(self) -> str:
        """`GET /metrics`: Prometheus text."""
        return self._call(calls.server_metrics())

    def openapi(self) -> dict[str, Any]:
        return self._call(calls.openapi())

    def events(self, since: int = 0, *, follow: bool = False) -> EventStream:
        """`GET /events`: the event log from `since` on; with `follow`, then live."""
        resp = self._send("GET", calls.events_path(since, follow), accept=NDJSON, streaming=True)
        return EventStream(resp)

    # --- images ---

    def images(self) -> ImagesReply:
        """`GET /images`: the images and layers in the server's store."""
        return self._call(calls.images())

    def prune_images(self) -> PruneReply:
        """`POST /images/prune`: remove every image and layer no container uses."""
        return self._call(calls.prune_images())

    def import_image(self, rootfs: str) -> Iterator[ImportLine]:
        """`POST /images`: progress lines while the server imports the image, then one with
        `image` (or `error`, for a failure after the import began)."""
        resp = self._send(
            "POST",
            "/images",
            calls.import_image_body(rootfs),
            content_type=JSON,
            accept=NDJSON,
            streaming=True,
        )
        try:
            for line in resp.iter_lines():
                if line.strip():
                    yield calls.decode_import_line(line)
        finally:
            resp.close()

    # --- containers ---

    def handles(self, properties: Mapping[str, str] | None = None) -> list[str]:
        """`GET /containers`: the handles whose properties match every pair given."""
        return self._call(calls.handles(properties))

    def create(self, spec: ContainerSpec | None = None) -> str:
        """`POST /containers`: the new container's handle."""
        return self._call(calls.create(spec or ContainerSpec()))

    def info(self, handle: str) -> ContainerInfo:
        return self._call(calls.info(handle))

    def bulk_info(self, handles: Iterable[str]) -> dict[str, BulkInfoEntry]:
        return self._call(calls.bulk_info(handles))

    def bulk_metrics(self, handles: Iterable[str]) -> dict[str, BulkMetricsEntry]:
        return self._call(calls.bulk_metrics(handles))

    def metrics(self, handle: str) -> ContainerMetrics:
        return self._call(calls.metrics(handle))

    def destroy(self, handle: str) -> None:
        self._call(calls.destroy(handle))

    def stop(self, handle: str, *, kill: bool = False) -> None:
        self._call(calls.stop(handle, kill))

    def set_grace_time(self, handle: str, seconds: float) -> None:
        self._call(calls.set_grace_time(handle, seconds))

    # --- properties ---

    def properties(self, handle: str) -> dict[str, str]:
        return self._call(calls.properties(handle))

    def get_property(self, handle: str, key: str) -> str:
        return self._call(calls.get_property(handle, key))

    def set_property(self, handle: str, key: str, value: str) -> None:
        self._call(calls.set_property(handle, key, value))

    def delete_property(self, handle: str, key: str) -> None:
        self._call(calls.delete_property(handle, key))

    # --- limits and networking ---

    def get_limit(self, handle: str, kind: type[L]) -> L:
        """`GET .../limits/<kind>`, e.g. `get_limit(h, MemoryLimits)`."""
        return self._call(calls.get_limit(handle, kind))

    def set_limit(self, handle: str, limit: L) -> L:
        """`PUT .../limits/<kind>`; answers the limit in force afterwards."""
        return self._call(calls.set_limit(handle, limit))

    def net_in(self, handle: str, host_port: int = 0, container_port: int = 0) -> PortMapping:
        return self._call(calls.net_in(handle, host_port, container_port))

    def net_out(self, handle: str, rule: NetOutRule) -> None:
        self._call(calls.net_out(handle, rule))

    # --- files ---

    def stream_in(
        self,
        handle: str,
        destination: str,
        data: bytes | Iterable[bytes] | IO[bytes],
        *,
        tar: bool = False,
    ) -> None:
        """`PUT .../files?destination=P`: the bytes of a file, or with `tar` a tar archive
        that is unpacked into the directory P."""
        body: Body = file_chunks(data) if hasattr(data, "read") else data  # type: ignore[arg-type]
        self._send(
            "PUT",
            calls.files_path(handle, destination=destination),
            body,
            content_type=TAR if tar else OCTETS,
        ).read()

    def stream_out(self, handle: str, source: str) -> Download:
        """`GET .../files?source=P`: a file's bytes, or a tar of a directory (`is_tar`)."""
        resp = self._send("GET", calls.files_path(handle, source=source), accept="*/*")
        return Download(resp)

    # --- processes ---

    def run(self, handle: str, spec: ProcessSpec, *, base64: bool = False) -> ProcessStream:
        """`POST .../processes`: start a process and follow its output. Returns once the
        server has named the process (`process_id`); iterate for output."""
        resp = self._send(
            "POST",
            calls.run_path(handle, base64),
            calls.run_body(spec),
            content_type=JSON,
            accept=NDJSON,
            streaming=True,
        )
        return ProcessStream(resp, handle, base64)

    def attach(self, handle: str, process_id: str, *, base64: bool = False) -> ProcessStream:
        """`GET .../processes/:pid`: the output so far, then live, then the exit status."""
        resp = self._send(
            "GET", calls.attach_path(handle, process_id, base64), accept=NDJSON, streaming=True
        )
        return ProcessStream(resp, handle, base64)

    def stdin(
        self, handle: str, process_id: str, data: bytes | Iterable[bytes] | IO[bytes]
    ) -> None:
        """`PUT .../processes/:pid/stdin`: the body goes to the process's stdin; its end
        closes stdin."""
        body: Body = file_chunks(data) if hasattr(data, "read") else data  # type: ignore[arg-type]
        self._send("PUT", calls.stdin_path(handle, process_id), body, content_type=OCTETS).read()

    def signal(self, handle: str, process_id: str, signal: str | int) -> None:
        self._call(calls.signal(handle, process_id, signal))

    def terminal(self, handle: str, process_id: str) -> Terminal:
        """`GET .../processes/:pid/ws`: the process's terminal (see `garden.client.terminal`)."""
        from garden.client.terminal import Terminal

        return Terminal(
            self.target,
            calls.terminal_path(handle, process_id),
            request_headers(self._token, None, "*/*"),
            self.timeout,
        )


@final
class ProcessStream:
    """A process's output as it happens. Iterate for `ProcessPayload`s (output only), or use
    `outputs()` for exact bytes, `wait()` for the exit status, `result()` for everything.
    Closing it early leaves the process running (it belongs to its container)."""

    def __init__(self, resp: Response, handle: str, base64: bool) -> None:
        self._resp = resp
        self._state = StreamState(handle, base64)
        self._lines = resp.iter_lines()
        self._first: list[ProcessPayload] = []
        try:
            for line in self._lines:
                if (p := self._state.on_line(line)) is not None:
                    self._first.append(p)
                if self._state.process_id:
                    break
            self._state.check_named()
        except BaseException:
            resp.close()
            raise

    @property
    def process_id(self) -> str:
        return self._state.process_id

    @property
    def exit_status(self) -> int | None:
        """None until the stream has ended."""
        return self._state.exit_status

    def __iter__(self) -> Iterator[ProcessPayload]:
        for p in self._follow(as_output=False):
            assert not isinstance(p, Output)
            yield p

    def _follow(self, *, as_output: bool) -> Iterator[ProcessPayload | Output]:
        on_line = self._state.on_output_line if as_output else self._state.on_line
        try:
            yield from self._first
            self._first.clear()
            if self._state.exit_status is None:
                for line in self._lines:
                    if (p := on_line(line)) is not None:
                        yield p
                    if self._state.exit_status is not None:
                        break
            self._state.check_ended()
        finally:
            if self._state.exit_status is not None:
                # Read the end of the body so the connection can be reused.
                for _ in self._lines:
                    pass
            self._resp.close()

    def outputs(self) -> Iterator[Output]:
        """The output as exact bytes (base64 lines decoded straight from the line)."""
        for p in self._follow(as_output=True):
            yield self._state.output(p)

    def wait(self) -> int:
        for _ in self:
            pass
        return self._state.check_ended()

    def result(self) -> ProcessResult:
        collected = Collected()
        for out in self.outputs():
            collected.add(out)
        return collected.result(self.process_id, self._state.check_ended())

    def close(self) -> None:
        self._resp.close()

    def __enter__(self) -> ProcessStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@final
class Download:
    """The answer of stream-out: iterate for the bytes; `is_tar` for a directory."""

    def __init__(self, resp: Response) -> None:
        self._resp = resp
        self.content_type = resp.headers.get("content-type", OCTETS).split(";")[0].strip()

    @property
    def is_tar(self) -> bool:
        return self.content_type == TAR

    def __iter__(self) -> Iterator[bytes]:
        return self._resp.iter_bytes()

    def read(self) -> bytes:
        return self._resp.read()

    def close(self) -> None:
        self._resp.close()

    def __enter__(self) -> Download:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@final
class EventStream:
    """The event log: iterate for `Record`s, or `lines()` for the raw NDJSON."""

    def __init__(self, resp: Response) -> None:
        self._resp = resp

    def lines(self) -> Iterator[bytes]:
        try:
            for line in self._resp.iter_lines():
                if line.strip():
                    yield line
        finally:
            self._resp.close()

    def __iter__(self) -> Iterator[Record]:
        from garden.events.schema import Record

        decoder = msgspec.json.Decoder(Record)
        for line in self.lines():
            try:
                yield decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise UnexpectedResponseError(f"not an event record: {exc}") from exc

    def close(self) -> None:
        self._resp.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
