"""Checks a create request before anything is recorded or built: every 400 of a create comes from
here, so a bad request never leaves an event or a kernel resource behind."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path

from garden import bounds
from garden import limits as lim
from garden.actors.net_rules import check_bandwidth
from garden.actors.pools import parse_network
from garden.api import (
    BandwidthLimits,
    ContainerSpec,
    CpuLimits,
    DiskLimits,
    Limits,
    MemoryLimits,
    PidLimits,
    check_handle,
)
from garden.config import MONITOR_SOCKET_ROOT, ServerConfig
from garden.errors import InvalidRequestError, PrivilegedContainersDisallowedError
from garden.images.uri import ImageSource, parse_rootfs


def check_spec(spec: ContainerSpec, config: ServerConfig) -> str | ImageSource:
    """Validate `spec`; return the host directory to use as the rootfs, or the image. A
    privileged create on a server with `--disallow-privileged-containers` is refused before
    anything is recorded or built."""
    if spec.handle is not None:
        check_handle(spec.handle)
    if spec.privileged and config.disallow_privileged_containers:
        raise PrivilegedContainersDisallowedError(
            "privileged containers are not allowed on this server "
            "(--disallow-privileged-containers)",
            handle=spec.handle or "",
        )
    if spec.grace_time is not None and (spec.grace_time < 0 or spec.grace_time != spec.grace_time):
        raise InvalidRequestError("grace_time must be a number of seconds >= 0")
    bounds.check_env(spec.env)
    if isinstance(spec.properties, list):
        bounds.check_count("properties", len(spec.properties), bounds.MAX_PROPERTIES)
    bounds.check_properties(spec.property_dict())
    bounds.check_count("bind mounts", len(spec.bind_mounts), bounds.MAX_BIND_MOUNTS)
    for bm in spec.bind_mounts:
        check_container_path(bm.dst_path, "bind mount dst_path")
        if bm.origin == "Host":
            if "\0" in bm.src_path or not os.path.isabs(bm.src_path):
                raise InvalidRequestError(f"bind mount src_path {bm.src_path!r} must be absolute")
            if not os.path.exists(bm.src_path):
                raise InvalidRequestError(f"bind mount src_path {bm.src_path!r} does not exist")
            check_host_source(bm.src_path, config)
        else:
            check_container_path(bm.src_path, "bind mount src_path")
    parse_network(spec.network, IPv4Network(config.network_pool))
    check_limits(spec.limits)
    rootfs = parse_rootfs(spec.rootfs or config.default_rootfs)
    if rootfs.path:  # a host directory or an image file (docker:// has none)
        check_host_source(rootfs.path, config, "rootfs")
    if isinstance(rootfs, ImageSource):
        return rootfs
    if not os.path.isdir(rootfs.path):
        raise InvalidRequestError(f"rootfs {rootfs.path!r} is not a directory on the host")
    return str(Path(rootfs.path).resolve())


def _check_bandwidth(value: object) -> None:
    assert isinstance(value, BandwidthLimits)
    check_bandwidth(value)


def _check_memory(value: object) -> None:
    assert isinstance(value, MemoryLimits)
    lim.check_memory(value)


def _check_cpu(value: object) -> None:
    assert isinstance(value, CpuLimits)
    lim.check_cpu(value)


def _check_disk(value: object) -> None:
    assert isinstance(value, DiskLimits)
    lim.check_disk(value)


def _check_pids(value: object) -> None:
    assert isinstance(value, PidLimits)
    lim.check_pids(value)


# One rule per kind of limit in a create's `limits`, each checking only its own object.
LIMIT_RULES: dict[str, Callable[[object], None]] = {
    "bandwidth": _check_bandwidth,
    "memory": _check_memory,
    "cpu": _check_cpu,
    "disk": _check_disk,
    "pids": _check_pids,
}


def check_limits(limits: Limits | None) -> None:
    if limits is None:
        return
    for kind, rule in LIMIT_RULES.items():
        value = getattr(limits, kind)
        if value is not None:
            rule(value)


def check_container_path(path: str, what: str) -> None:
    if not path.startswith("/") or "\0" in path or len(path) > bounds.MAX_PATH:
        raise InvalidRequestError(f"{what} {path!r} must be an absolute path")
    if posixpath.normpath(path) == "/":
        raise InvalidRequestError(f"{what} must not be the container's root")
    if ".." in path.split("/"):
        raise InvalidRequestError(f"{what} {path!r} must not contain '..'")


# Host paths no bind mount (nor rootfs) may be, lie in, or contain: the kernel's views of
# itself and the host's devices. The server's own paths are added from its config.
HOST_PATHS_REFUSED = ("/proc", "/sys", "/dev")


def protected_host_paths(config: ServerConfig) -> list[str]:
    """Host paths a container must never see: the kernel's, the state dir (event log,
    bundles, other containers' layers), the monitors' attach sockets, the API's own socket and
    the token file."""
    paths = [*HOST_PATHS_REFUSED, config.state_dir, MONITOR_SOCKET_ROOT]
    if config.bind_socket:
        paths.append(config.bind_socket)
    if config.auth_token_file:
        paths.append(config.auth_token_file)
    return [os.path.realpath(p) for p in paths]


def check_host_source(src: str, config: ServerConfig, what: str = "bind mount src_path") -> None:
    """A host path given to a container may not be, lie inside or contain (a bind of a parent
    shows what is under it) any of `protected_host_paths`. Symlinks are resolved first."""
    if len(src) > bounds.MAX_PATH:
        raise InvalidRequestError(f"{what} is longer than {bounds.MAX_PATH} characters")
    real = os.path.realpath(src)
    for protected in protected_host_paths(config):
        if _within(real, protected) or _within(protected, real):
            raise InvalidRequestError(f"{what} {src!r} would expose {protected} to the container")


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")
