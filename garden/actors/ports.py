"""What the actors need from the kernel side, declared here where it is consumed.

`garden/linux/containers.py` implements `ContainerKernel` for real and `garden/linux/files.py`
`ContainerFiles`; `tests/unit/fakes.py` and `tests/unit/fake_files.py` have fakes that record
calls. Actors never import `garden.linux` modules other than the plain data types of
`garden.linux.plan`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Literal, Protocol

import trio

from garden.api import ProcessSpec
from garden.images.model import ImageManifest, LayerRef, StoredImage, StoredLayer
from garden.images.uri import ImageSource
from garden.linux.plan import (
    Bandwidth,
    ContainerPlan,
    ContainerStats,
    DiskQuota,
    FirewallRule,
    LimitChange,
    LiveNetwork,
    NetWiring,
    PortMap,
    ResourceLimits,
    SpawnedProcess,
    Started,
)

Liveness = Literal["running", "stopped", "gone"]


class ResourceKernel(Protocol):
    """Limits, figures and OOM notification of a running container."""

    async def set_limits(self, plan: ContainerPlan, change: LimitChange) -> ResourceLimits:
        """Change the cgroup limits that `change` gives (LimitChange() changes nothing) and
        return every cgroup limit in force, as the kernel reports it. `ConflictError` when
        the kernel refuses because of what the container uses."""
        ...

    async def set_disk_quota(self, plan: ContainerPlan, quota: DiskQuota) -> None:
        """Enforce hard disk limits on the container's own layer (`plan.disk` not None): once
        after the create (what is in the layer then is not the container's use), then on each
        change. `ConflictError` below current use or beyond what the layer can hold."""
        ...

    async def reconcile_limits(self, plan: ContainerPlan) -> list[str]:
        """At start-up: make the kernel hold the limits of `plan` (`resources`, `disk`) where
        it holds others (a change the kernel made before a crash kept it from being
        recorded, so it was never in force for any client); return the kinds corrected."""
        ...

    async def stats(self, plan: ContainerPlan) -> ContainerStats:
        """Memory, cpu, disk and pids figures read from the kernel now."""
        ...

    async def wait_oom(self, plan: ContainerPlan) -> None:
        """Return once the kernel has OOM-killed a process of the container (at once if that
        happened before the call, e.g. while the server was down). Kernel notification, no
        polling."""
        ...


class ContainerKernel(ResourceKernel, Protocol):
    async def create(self, plan: ContainerPlan) -> Started:
        """Build and start the container. On failure everything taken is released before
        the error propagates."""
        ...

    async def destroy(self, plan: ContainerPlan) -> None:
        """Kill every process and release every resource of the plan. Idempotent: what is
        already gone counts as done; safe to call for a half-created container."""
        ...

    async def stop(self, plan: ContainerPlan, *, kill: bool, timeout: float) -> None:
        """Signal every process (TERM, then KILL after `timeout`; KILL at once with `kill`)
        and return once all are gone; the rootfs stays."""
        ...

    async def probe(self, plan: ContainerPlan, started: Started | None) -> Liveness:
        """After a restart: is the container's init still the process that was started?"""
        ...

    async def wait_exit(self, started: Started) -> None:
        """Return when the container's init exits (pidfd, no polling)."""
        ...

    async def sweep(self, owned: set[str]) -> list[str]:
        """Release every kernel resource under our names whose container id is not in `owned`
        (left by a crash); return the ids released."""
        ...


class OutputChunk(Protocol):
    @property
    def source(self) -> str: ...

    @property
    def data(self) -> bytes: ...


class ProcessKernel(Protocol):
    """Processes in a running container, each under a monitor that outlives the server."""

    async def spawn(
        self,
        plan: ContainerPlan,
        started: Started,
        spec: ProcessSpec,
        process_id: str,
        *,
        container_env: list[str],
        privileged_container: bool,
        announce: Callable[[SpawnedProcess], object] | None = None,
    ) -> SpawnedProcess:
        """Start the process; `ExecutableNotFoundError`/`InvalidRequestError` before anything
        runs when the spec cannot work. `announce(planned)`, if given, is called once right
        before the process is started, with its facts but for the pids (0); if it raises,
        nothing is started."""
        ...

    async def wait_exit(self, facts: SpawnedProcess) -> int | None:
        """The exit status (128+signal when killed); None if the monitor vanished."""
        ...

    def signal(self, facts: SpawnedProcess, signum: int) -> bool: ...

    def resize(self, facts: SpawnedProcess, rows: int, columns: int) -> bool: ...

    async def open_stdin(self, facts: SpawnedProcess) -> trio.abc.SendStream: ...

    def output(
        self, facts: SpawnedProcess, *, replay_bytes: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[OutputChunk]]:
        """Output from the start (or the last `replay_bytes`), live until exit."""
        ...

    async def cleanup(self, facts: SpawnedProcess) -> None:
        """Kill it if it still runs and remove its files and monitor leftovers."""
        ...

    async def find_announced(self, planned: SpawnedProcess) -> SpawnedProcess | None:
        """At start-up, for a spawn announced but never settled in the log: its facts with
        the pids (from the files it left), or None if no process ran (then nothing of it is
        left)."""
        ...

    async def sweep(self, plan: ContainerPlan, known: set[str]) -> list[str]:
        """Kill and remove processes of the container that the log does not know."""
        ...


class Networker(Protocol):
    """Container networking: each call is about one container's `plan.network` (and does
    nothing when it is None, for containers made before networking existed)."""

    async def restore(self, live: Sequence[LiveNetwork]) -> list[str]:
        """At start-up, after recovery: make the kernel's network state that of `live` (every
        mapping and rule the log records), and delete every link of ours that no live
        container owns; return the names deleted."""
        ...

    async def setup(self, plan: ContainerPlan, started: Started, wiring: NetWiring) -> None:
        """Wire the started container to the host (its init's namespace exists). On failure
        everything taken is released before the error propagates."""
        ...

    async def teardown(self, plan: ContainerPlan, wiring: NetWiring) -> None:
        """Release everything of the container after its processes are gone. Idempotent."""
        ...

    async def map_port(self, plan: ContainerPlan, mapping: PortMap) -> None: ...

    async def unmap_port(self, plan: ContainerPlan, mapping: PortMap) -> None: ...

    async def allow_out(self, plan: ContainerPlan, rule: FirewallRule) -> None: ...

    async def limit_bandwidth(
        self, plan: ContainerPlan, current: Bandwidth | None, new: Bandwidth | None
    ) -> None:
        """Change the limit in force from `current` to `new` (None: unlimited)."""
        ...

    def stats(self, plan: ContainerPlan, wiring: NetWiring) -> dict[str, int]:
        """The container's `bandwidth_stat`: limits in force and traffic counters (quick
        reads, no waiting)."""
        ...


class FileSource(Protocol):
    """A file or directory of a container, opened for reading (see `ContainerFiles`)."""

    kind: Literal["file", "dir"]
    size: int | None  # of a file; None for a directory (it streams as a tar)

    def stream(self) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[bytes]]:
        """Its bytes in blocks (a directory as a tar); use once. Closes the source."""
        ...

    def close(self) -> None:
        """Release a source that will not be streamed (idempotent)."""
        ...


class ContainerFiles(Protocol):
    """Files into and out of a container's filesystem (`garden/linux/files.py`). Every path is
    resolved inside the container (relative ones from `user`'s home), whatever symlinks it
    meets; `user` ("" = root) owns what is written. Errors are `GardenError`s: a missing source
    is `FileNotFoundInContainerError`, a bad path or tar `InvalidRequestError`, a directory
    where a file goes `ConflictError`, a full disk `DiskLimitExceededError`."""

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
        """Write `body` (`size` bytes, when the client said) as the file `path`, or unpack it
        (a tar) into the directory `path`. A file appears whole or not at all; parent
        directories are made."""
        ...

    async def open_source(
        self, plan: ContainerPlan, started: Started | None, *, path: str, user: str
    ) -> FileSource:
        """Open the file or directory at `path` (404 before any byte is sent when absent)."""
        ...


class ImageStore(Protocol):
    """The content-addressed layer store (`garden/linux/images/store.py`): reading images,
    unpacking their layers once each, and what is stored. `ImageNotFoundError` /
    `InvalidImageError` for images that are not there or cannot be used."""

    async def inspect(self, source: ImageSource, *, refresh: bool = False) -> ImageManifest:
        """A `docker://` tag that names a stored image is that image (no registry asked)
        unless `refresh`."""
        ...

    async def tag(self, source: ImageSource, digest: str) -> str | None:
        """Record that the `docker://` tag of `source` names the stored image `digest`; the
        digest it named before ("" for none) when that changed, else None."""
        ...

    def reference(self, source: ImageSource) -> str:
        """The canonical `registry/name:tag` of a `docker://` source."""
        ...

    async def unpack(
        self, source: ImageSource, layer: LayerRef, progress: Callable[[int], None] | None = None
    ) -> StoredLayer | None:
        """Make sure the layer is stored; the layer when this call unpacked it, None when it
        was already there. Concurrent calls for one layer unpack it once."""
        ...

    def has_image(self, digest: str) -> bool: ...

    def layers(self) -> list[StoredLayer]: ...

    def images(self) -> list[StoredImage]: ...

    async def save_image(self, manifest: ImageManifest) -> None: ...

    def discard(self, image_digests: list[str], diff_ids: list[str]) -> None:
        """Take them out of the store at once (no await); `empty_trash` deletes them."""
        ...

    async def empty_trash(self) -> None: ...

    async def sweep(self) -> list[str]:
        """Remove temp dirs a crash left; return their paths."""
        ...
