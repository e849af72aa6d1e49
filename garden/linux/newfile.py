"""Entries that appear in a directory whole or not at all: a new file is written unnamed
(O_TMPFILE, or under a random temporary name where the filesystem cannot) and renamed over its
final name only when complete; symlinks, hardlinks and FIFOs are made under a temporary name
and renamed the same way. On any failure the temporary is removed (an O_TMPFILE file simply
vanishes, even if the server is killed).

Every call here takes a directory fd and a single name (never a path) and never follows a
symlink at that name: the directory may belong to a container whose processes race us.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import final

from garden import faults

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int
# Where fallocate is not supported, do without (glibc's posix_fallocate would write zeros).
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def temp_name() -> str:
    return f".garden-{secrets.token_hex(8)}.tmp"


@final
class NewFile:
    """A regular file being written in `parent_fd`; `publish(name)` renames it into place.
    Use as a context manager: leaving without `publish` (or by an error) discards it."""

    def __init__(self, parent_fd: int) -> None:
        self._parent = parent_fd
        self._temp: str | None = None
        try:
            fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self._temp = temp_name()
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self._temp, flags, 0o600, dir_fd=parent_fd)
        self.fd = fd
        self._done = False

    def reserve(self, size: int) -> None:
        """Allocate `size` bytes up front: a full disk fails here, before any data is sent
        (ENOSPC/EDQUOT), and writing into allocated blocks is faster (ext4 skips its delayed
        allocation). Filesystems without fallocate are written as they come."""
        if size <= 0 or _libc.fallocate(self.fd, 0, 0, size) == 0:
            return
        err = ctypes.get_errno()
        if err not in _NO_FALLOCATE:
            raise OSError(err, os.strerror(err), "fallocate")

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def writev(self, chunks: Sequence[bytes | memoryview]) -> None:
        total = sum(map(len, chunks))
        written = os.writev(self.fd, chunks)
        if written < total:  # short write: finish the rest one chunk at a time
            for chunk in chunks:
                if written >= len(chunk):
                    written -= len(chunk)
                    continue
                self.write(memoryview(chunk)[written:])
                written = 0

    def finish(self, *, uid: int, gid: int, mode: int, mtime: float | None = None) -> None:
        """Owner, then mode (a chown clears set-id bits), then times."""
        os.fchown(self.fd, uid, gid)
        os.fchmod(self.fd, mode)
        if mtime is not None:
            os.utime(self.fd, (mtime, mtime))

    def publish(self, name: str) -> None:
        """Give the file the name `name`, atomically replacing a file or symlink there. An
        unnamed file with nothing at `name` is linked there directly, so a killed server
        leaves no temporary name behind; a replacement is linked under a temporary name and
        renamed over the old entry."""
        if self._temp is None:
            source = f"/proc/self/fd/{self.fd}"
            try:
                os.link(source, name, dst_dir_fd=self._parent)
            except FileExistsError:
                pass
            else:
                self._done = True
                return
            temp = temp_name()
            os.link(source, temp, dst_dir_fd=self._parent)
            self._temp = temp
            faults.reached("files:after-link")
        rename_into_place(self._parent, self._temp, name)
        self._temp = None
        self._done = True

    def discard(self) -> None:
        if self._temp is not None:
            _unlink_quietly(self._parent, self._temp)
            self._temp = None

    def __enter__(self) -> NewFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._done:
                self.discard()
        finally:
            os.close(self.fd)


def make_entry(parent_fd: int, name: str, make: Callable[[str], None]) -> None:
    """`make(temp)` creates an entry at a temporary name in `parent_fd` (and sets it up); it is
    then renamed over `name`. On failure the temporary is removed."""
    temp = temp_name()
    try:
        make(temp)
        rename_into_place(parent_fd, temp, name)
    except BaseException:
        _unlink_quietly(parent_fd, temp)
        raise


def rename_into_place(parent_fd: int, temp: str, name: str) -> None:
    os.rename(temp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)


def chmod_nofollow(parent_fd: int, name: str, mode: int) -> None:
    """chmod of the entry `name` itself, never of what a symlink there points to (fchmodat
    follows symlinks; a magic link to an O_PATH fd does not). Symlinks have no mode to set."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _unlink_quietly(parent_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=parent_fd)
    except OSError:
        pass
