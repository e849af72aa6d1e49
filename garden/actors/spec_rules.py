"""Checks a create request before anything is recorded or built: every 400 of a create comes from
here, so a bad request never leaves an event or a kernel resource behind."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path

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
from garden.config import ServerConfig
from garden.errors import InvalidRequestError, PrivilegedContainersDisallowedError
from garden.images.uri import ImageSource, parse_rootfs

MAX_PROPERTIES = 1024
MAX_PROPERTY_BYTES = 64 * 1024
MAX_ENV_BYTES = 256 * 1024
MAX_BIND_MOUNTS = 64


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
    check_env(spec.env)
    props = spec.property_dict()
    if len(props) > MAX_PROPERTIES:
        raise InvalidRequestError(f"at most {MAX_PROPERTIES} properties")
    for key, value in props.items():
        check_property(key, value)
    if len(spec.bind_mounts) > MAX_BIND_MOUNTS:
        raise InvalidRequestError(f"at most {MAX_BIND_MOUNTS} bind mounts")
    for bm in spec.bind_mounts:
        check_container_path(bm.dst_path, "bind mount dst_path")
        if bm.origin == "Host":
            if not os.path.isabs(bm.src_path):
                raise InvalidRequestError(f"bind mount src_path {bm.src_path!r} must be absolute")
            if not os.path.exists(bm.src_path):
                raise InvalidRequestError(f"bind mount src_path {bm.src_path!r} does not exist")
            check_host_source(bm.src_path, config)
        else:
            check_container_path(bm.src_path, "bind mount src_path")
    parse_network(spec.network, IPv4Network(config.network_pool))
    check_limits(spec.limits)
    rootfs = parse_rootfs(spec.rootfs or config.default_rootfs)
    if isinstance(rootfs, ImageSource):
        if rootfs.kind == "docker":
            raise InvalidRequestError(
                f"rootfs {rootfs.uri()}: registry images are not supported yet (docs/images.md)"
            )
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


def check_env(env: list[str]) -> None:
    total = 0
    for item in env:
        if "=" not in item or item.startswith("=") or "\0" in item:
            raise InvalidRequestError(f"env entry {item!r} must look like NAME=value")
        total += len(item)
    if total > MAX_ENV_BYTES:
        raise InvalidRequestError(f"env is larger than {MAX_ENV_BYTES} bytes")


def check_property(key: str, value: str) -> None:
    if not key or "\0" in key or "\0" in value:
        raise InvalidRequestError("property keys must be non-empty and free of NUL bytes")
    if len(key) + len(value) > MAX_PROPERTY_BYTES:
        raise InvalidRequestError(f"property {key!r} is larger than {MAX_PROPERTY_BYTES} bytes")


def check_container_path(path: str, what: str) -> None:
    if not path.startswith("/") or "\0" in path:
        raise InvalidRequestError(f"{what} {path!r} must be an absolute path")
    if posixpath.normpath(path) == "/":
        raise InvalidRequestError(f"{what} must not be the container's root")
    if ".." in path.split("/"):
        raise InvalidRequestError(f"{what} {path!r} must not contain '..'")


def check_host_source(src: str, config: ServerConfig) -> None:
    """A host bind-mount source may not expose the server's own state."""
    real = os.path.realpath(src)
    state = os.path.realpath(config.state_dir)
    if real == state or real.startswith(state + "/"):
        raise InvalidRequestError(f"bind mount src_path {src!r} is inside the server's state dir")
