"""What the kernel side needs to build, find again and tear down one container.

A `ContainerPlan` is made from the facts of a `ContainerCreateStarted` event, so a plan can be
rebuilt after a crash from the log alone. It is plain data: no live objects.
"""

from __future__ import annotations

from pathlib import Path

import msgspec


class MountPlan(msgspec.Struct, frozen=True, kw_only=True):
    """A bind mount: `source` is a host path (for origin Container it is already resolved to
    the path inside the container's rootfs), `destination` a path inside the container."""

    source: str
    destination: str
    read_only: bool
    origin: str = "Host"


class ContainerPlan(msgspec.Struct, frozen=True, kw_only=True):
    handle: str
    container_id: str  # runtime id; also the name of the cgroup leaf
    container_path: str  # directory under the state dir owned by this container
    rootfs: str  # host directory used as the read-only lower layer
    hostname: str
    env: list[str]
    bind_mounts: list[MountPlan]
    uid_base: int | None  # host uid of container root; None = privileged (no user namespace)
    cgroup_path: str  # e.g. "/garden/<container_id>", the same in every hierarchy
    netns_path: str | None = None  # join this network namespace instead of a new empty one


class Started(msgspec.Struct, frozen=True, kw_only=True):
    pid: int  # host pid of the container's init
    pid_start_time: int  # field 22 of /proc/<pid>/stat, to tell a reused pid apart


class SpawnedProcess(msgspec.Struct, frozen=True, kw_only=True):
    """Facts about one spawned process; store them and pass them to every other call."""

    container_id: str
    process_dir: str
    socket_link: str  # <socket_dir>/<token>, conmon's symlink to process_dir
    pid: int  # host pid of the process
    pid_start_time: int | None  # None: it had already exited when we looked
    conmon_pid: int
    conmon_start_time: int | None
    tty: bool
    stdin: bool

    @property
    def log_path(self) -> Path:
        return Path(self.process_dir) / "log"

    @property
    def exit_path(self) -> Path:
        return Path(self.process_dir) / "exit" / self.container_id
