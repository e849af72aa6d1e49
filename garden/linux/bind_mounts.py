"""Bind mounts checked against the container's rootfs before the runtime sees them, with every
path inside the rootfs resolved by the kernel (`inroot`, openat2 RESOLVE_IN_ROOT):

- a source of origin `Container` is looked up inside the rootfs, so a symlink in the image
  (`/data -> /`) cannot make the runtime, which resolves sources on the host, mount a host
  directory; the mount then names the path the kernel found, which lies inside the rootfs;
- a destination that exists must be of the source's kind (a directory over a directory, a
  file over a file), which the runtime would otherwise refuse late, as an internal error.

The runtime resolves destinations inside the rootfs itself; `..` was refused with the request.
"""

from __future__ import annotations

import errno
import os
import stat

from garden.errors import InvalidRequestError
from garden.linux import inroot
from garden.linux.plan import ContainerPlan, MountPlan

_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV)


def _stat_in_root(root_fd: int, path: str) -> tuple[os.stat_result, str] | None:
    """The stat and the host path of `path` resolved inside the root; None if missing."""
    try:
        fd = inroot.open_in_root(root_fd, path.lstrip("/"), os.O_PATH)
    except OSError as exc:
        if exc.errno in _MISSING:
            return None
        raise
    try:
        return os.fstat(fd), os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def checked_mounts(plan: ContainerPlan, rootfs_dir: str) -> list[MountPlan]:
    """`plan.bind_mounts` with container sources resolved inside `rootfs_dir` (the mounted
    rootfs); an InvalidRequestError names a mount that cannot work."""
    prefix = rootfs_dir.rstrip("/") + "/"
    out = []
    with inroot.opened_root(rootfs_dir) as root_fd:
        for m in plan.bind_mounts:
            source = m.source
            if m.origin == "Container":
                inside = "/" + source.removeprefix(prefix)
                found = _stat_in_root(root_fd, inside)
                if found is None:
                    raise InvalidRequestError(
                        f"bind mount src_path {inside!r} does not exist in the rootfs",
                        handle=plan.handle,
                    )
                source_stat, source = found
            else:
                try:
                    source_stat = os.stat(source)
                except OSError as exc:
                    raise InvalidRequestError(
                        f"bind mount src_path {source!r}: {exc.strerror}", handle=plan.handle
                    ) from exc
            target = _stat_in_root(root_fd, m.destination)
            if target is not None:
                source_dir = stat.S_ISDIR(source_stat.st_mode)
                if source_dir != stat.S_ISDIR(target[0].st_mode):
                    kinds = ("directory", "file") if source_dir else ("file", "directory")
                    raise InvalidRequestError(
                        f"bind mount of a {kinds[0]} over the {kinds[1]} {m.destination!r}",
                        handle=plan.handle,
                    )
            out.append(
                MountPlan(
                    source=source, destination=m.destination, read_only=m.read_only, origin=m.origin
                )
            )
    return out
