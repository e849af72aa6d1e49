"""Paths inside a container's root, resolved the way the kernel resolves them inside the
container: every lookup is openat2(RESOLVE_IN_ROOT) relative to a dirfd of the root, so `..`
stops at the root, absolute symlinks (and chains of them) start again at the root, and magic
links (/proc/<pid>/root, /proc/<pid>/fd/...) are refused. Nothing outside the root is reached,
whatever the path or the symlinks met on the way, and no string checks are involved.

Kernels without openat2 (before 5.6) get a stricter fallback: every component is opened with
O_NOFOLLOW, so symlinks and `..` are refused rather than followed.

The root is best `/proc/<init pid>/root` (the container's own view, bind mounts included) or
the host path of the container's rootfs; `opened_root` takes either, or an open dirfd.

Owned here: the openat2 syscall wrapper, `open_in_root`, `make_dirs` (mkdir -p inside the root,
new directories owned by a given host uid/gid), `read_file_in_root`, and `fs_type` (the
statfs magic of the filesystem an fd is on).
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

_SYS_OPENAT2: Final = 437  # the same number on every architecture
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10
# openat2 answers EAGAIN when any rename or mount on the machine raced a `..` lookup (symlinks
# like busybox's `../bin/busybox` take that path); on a busy host that needs more than a few
# tries, so after the first ones each retry yields the CPU first.
_RETRIES: Final = 2000
_RETRIES_WITHOUT_YIELD: Final = 16

Root = int | str | os.PathLike[str]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
_libc.fstatfs.restype = ctypes.c_int

# Set to True the first time the kernel says ENOSYS (tests set it to exercise the fallback).
_openat2_missing = False


@contextmanager
def opened_root(root: Root) -> Iterator[int]:
    """An O_PATH dirfd of `root` (a path), or `root` itself when it is already an fd (which
    the caller keeps owning)."""
    if isinstance(root, int):
        yield root
        return
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(root_fd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): `path` resolved
    as if `root_fd` were "/" (a leading "/" makes no difference). O_CLOEXEC is added. Raises
    OSError with the kernel's errno, the path in its filename."""
    global _openat2_missing
    rel = path if path.strip("/") else "."
    flags |= os.O_CLOEXEC
    if not flags & (os.O_CREAT | os.O_TMPFILE):
        mode = 0  # openat2 refuses a mode without O_CREAT/O_TMPFILE
    if not _openat2_missing:
        how = _OpenHow(flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        encoded = os.fsencode(rel)
        for attempt in range(_RETRIES):
            if attempt >= _RETRIES_WITHOUT_YIELD:
                os.sched_yield()
            fd = _libc.syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_long(root_fd),
                ctypes.c_char_p(encoded),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
            if fd >= 0:
                return int(fd)
            err = ctypes.get_errno()
            if err != errno.EAGAIN:
                break
        if err != errno.ENOSYS:
            raise OSError(err, os.strerror(err), path)
        _openat2_missing = True
    return _open_nofollow_walk(root_fd, rel, flags, mode)


def _open_nofollow_walk(root_fd: int, rel: str, flags: int, mode: int) -> int:
    """The fallback: open component by component with O_NOFOLLOW; `..` and every symlink
    (the last component's too, unless the caller asked O_NOFOLLOW) are refused with ELOOP."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.ELOOP, "'..' refused without openat2", rel)
    if not parts:
        return os.open(".", flags, mode, dir_fd=root_fd)
    parent = _walk_dirs(root_fd, parts[:-1], rel)
    try:
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=parent)
    finally:
        os.close(parent)
    # O_PATH|O_NOFOLLOW opens a symlink itself instead of failing: refuse it here.
    if not flags & os.O_NOFOLLOW and flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ELOOP, "symlink refused without openat2", rel)
    return fd


def _walk_dirs(root_fd: int, parts: list[str], rel: str) -> int:
    fd = os.dup(root_fd)
    try:
        for part in parts:
            flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except NotADirectoryError as e:
        # A symlink opened with O_NOFOLLOW|O_DIRECTORY (or a file): no way through.
        link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
        os.close(fd)
        raise OSError(errno.ELOOP if link else errno.ENOTDIR, e.strerror, rel) from e
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(root_fd: int, path: str, *, uid: int, gid: int, mode: int = 0o755) -> int:
    """`mkdir -p path` inside the root; an O_PATH dirfd of the result (the caller closes it).

    Existing components (symlinks to directories included, resolved inside the root) are used
    as they are; each new directory gets `mode` (not masked by the umask) and the host owner
    `uid`/`gid`. A component that exists but is not a directory raises ENOTDIR; a symlink that
    leads nowhere raises ENOENT (`mkdir -p` says "File exists").
    """
    dir_flags = os.O_PATH | os.O_DIRECTORY
    try:
        return open_in_root(root_fd, path, dir_flags)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
    parts = [p for p in path.split("/") if p not in ("", ".")]
    fd = open_in_root(root_fd, ".", dir_flags)
    done = ""
    try:
        for part in parts:
            here = posixpath.join(done, part)
            try:
                nfd = open_in_root(root_fd, here, dir_flags)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass  # a dangling symlink (reported below) or someone else's mkdir
                else:
                    own_dir(fd, part, uid, gid, mode)
                nfd = open_in_root(root_fd, here, dir_flags)
            os.close(fd)
            fd, done = nfd, here
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def own_dir(parent_fd: int, name: str, uid: int, gid: int, mode: int) -> None:
    """chown + chmod a directory just made, through an fd opened without following symlinks
    (if something swapped it for a symlink meanwhile, the open fails and nothing changes)."""
    fd = os.open(
        name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
    )
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def read_file_in_root(root: Root, path: str, limit: int = 4 << 20) -> bytes | None:
    """Up to `limit` bytes of the regular file at `path` inside `root`; None when it is absent,
    not a regular file, or reachable only through a symlink the fallback refuses."""
    with opened_root(root) as root_fd:
        try:
            fd = open_in_root(root_fd, path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO):
                return None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read(limit)


# statfs magics of filesystems that hold kernel state rather than files: never read or
# written through the files API (linux/magic.h).
PSEUDO_FILESYSTEMS: Final = {
    0x9FA0: "proc",
    0x62656572: "sysfs",
    0x27E0EB: "cgroup",
    0x63677270: "cgroup2",
    0x64626720: "debugfs",
    0x74726163: "tracefs",
    0x73636673: "securityfs",
    0xCAFE4A11: "bpf",
    0x1CD1: "devpts",
    0x19800202: "mqueue",
    0x62656570: "configfs",
    0x6165676C: "pstore",
    0xDE5E81E4: "efivarfs",
    0x42494E4D: "binfmt_misc",
    0xF97CFF8C: "selinuxfs",
    0x43415D53: "smackfs",
    0x6E736673: "nsfs",
    0x65735543: "fusectl",
}


def fs_type(fd: int) -> int:
    """The f_type (magic number) of the filesystem `fd` is on."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def pseudo_fs_name(fd: int) -> str | None:
    """The name of the kernel-state filesystem `fd` is on (proc, sysfs, cgroup, ...), else None."""
    return PSEUDO_FILESYSTEMS.get(fs_type(fd))
