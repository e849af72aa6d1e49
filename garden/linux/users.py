"""Users and groups of a container's rootfs: read its etc/passwd and etc/group without ever
leaving the rootfs (symlinks resolve inside it, as they would in the container).

Files are opened with openat2(RESOLVE_IN_ROOT) relative to a dirfd of the rootfs; on kernels
without openat2 every path component is opened with O_NOFOLLOW instead (symlinks refused).
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import NamedTuple

from garden.errors import InvalidRequestError

_SYS_OPENAT2 = 437  # x86_64 and aarch64
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_MAX_FILE = 4 << 20


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_missing = False


class UserIds(NamedTuple):
    uid: int
    gid: int
    home: str


def read_file_in_root(rootfs: str | Path, rel: str) -> bytes | None:
    """The bytes of `rel` inside `rootfs`, resolved as if `rootfs` were "/"; None if absent."""
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _open_in_root(root_fd, rel.lstrip("/"))
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read(_MAX_FILE)
    finally:
        os.close(root_fd)


def _open_in_root(root_fd: int, rel: str) -> int | None:
    global _openat2_missing
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    if not _openat2_missing:
        how = _OpenHow(flags, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_long(root_fd),
            ctypes.c_char_p(rel.encode()),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        if err != errno.ENOSYS:
            raise OSError(err, os.strerror(err), rel)
        _openat2_missing = True
    # Fallback: walk component by component, refusing symlinks.
    fd = os.dup(root_fd)
    try:
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        for i, part in enumerate(parts):
            if part == "..":
                return None
            last = i == len(parts) - 1
            extra = flags if last else os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
            nfd = os.open(part, extra | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        result, fd = fd, -1
        return result
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _entries(rootfs: str | Path, rel: str) -> list[list[str]]:
    data = read_file_in_root(rootfs, rel)
    if data is None:
        return []
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


def _find_passwd(
    rootfs: str | Path, *, name: str | None = None, uid: int | None = None
) -> UserIds | None:
    for f in _entries(rootfs, "etc/passwd"):
        if len(f) < 7 or not f[2].isdigit() or not f[3].isdigit():
            continue
        if (name is not None and f[0] == name) or (uid is not None and int(f[2]) == uid):
            return UserIds(int(f[2]), int(f[3]), f[5] or "/")
    return None


def _find_group(rootfs: str | Path, name: str) -> int | None:
    for f in _entries(rootfs, "etc/group"):
        if len(f) >= 3 and f[0] == name and f[2].isdigit():
            return int(f[2])
    return None


def lookup_user(rootfs: str | Path, user: str) -> UserIds:
    """Resolve "name", "uid", "name:group" or "uid:gid" against the rootfs.

    An empty `user` means root. A numeric uid unknown to etc/passwd is accepted with gid = uid
    (or the given gid) and home "/", as runc would run it.
    """
    user = user or "root"
    name, _, group = user.partition(":")
    if name.isdigit():
        found = _find_passwd(rootfs, uid=int(name))
        ids = found or UserIds(int(name), int(name), "/")
    else:
        named = _find_passwd(rootfs, name=name)
        if named is None:
            raise InvalidRequestError(f"unable to find user {name}: no matching entries in passwd")
        ids = named
    if group:
        gid = int(group) if group.isdigit() else _find_group(rootfs, group)
        if gid is None:
            raise InvalidRequestError(f"unable to find group {group}: no matching entries in group")
        ids = ids._replace(gid=gid)
    return ids


def supplementary_gids(rootfs: str | Path, name: str, primary_gid: int) -> list[int]:
    """Gids of the groups in etc/group that list `name` as a member (without the primary)."""
    out: list[int] = []
    for f in _entries(rootfs, "etc/group"):
        if len(f) >= 4 and f[2].isdigit() and name in f[3].split(","):
            gid = int(f[2])
            if gid != primary_gid and gid not in out:
                out.append(gid)
    return out
