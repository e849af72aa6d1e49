"""Packing a directory inside a container's root into a tar stream (pax format).

The tree is walked from an open directory fd with openat(O_NOFOLLOW) and fstatat without
following symlinks, one name at a time, so nothing outside the directory is ever opened: a
symlink becomes a symlink entry (its target as stored), never a way out. Regular files are read
in 1 MiB blocks; files with several links appear once with their data and then as hardlink
entries. FIFOs and device nodes become header-only entries; sockets are skipped. Directories on
kernel-state filesystems (proc, sysfs, cgroup, ...; see `inroot.PSEUDO_FILESYSTEMS`) appear
empty. Owners are written as the container sees them (host id - uid base; ids outside the
container's map as 65534, "nobody"). tarfile is used only to build headers.

A file that shrinks while being read is padded with zeros to its size in the header, one that
grows is cut there (as GNU tar does, without its warning).
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Callable
from typing import Final, final

import msgspec

from garden.errors import InvalidRequestError
from garden.linux import inroot
from garden.linux.threadio import BLOCK

MAX_DEPTH: Final = 256  # directories open at once on the way down
_NOBODY: Final = 65534
_ID_RANGE: Final = 65536
_RECORD: Final = tarfile.RECORDSIZE
_ZEROS: Final = bytes(tarfile.BLOCKSIZE * 2)


class PackStats(msgspec.Struct, kw_only=True):
    entries: int = 0
    bytes: int = 0
    skipped: int = 0  # sockets, and contents of kernel-state filesystems


@final
class TarPacker:
    """Writes a tar of one directory through `write`; `uid_base` is the host uid of the
    container's root (None: no user namespace)."""

    def __init__(self, write: Callable[[bytes], None], *, uid_base: int | None) -> None:
        self._out = write
        self._uid_base = uid_base
        self._offset = 0
        self._links: dict[tuple[int, int], str] = {}
        self.stats = PackStats()

    def pack(self, dir_fd: int, prefix: str) -> PackStats:
        """Entries are `prefix/...` (`./...` for an empty prefix); `dir_fd` is an O_RDONLY
        directory fd, left open."""
        top = prefix or "."
        self._header(top, os.fstat(dir_fd), tarfile.DIRTYPE)
        if inroot.pseudo_fs_name(dir_fd) is None:
            self._walk(dir_fd, top, 1)
        else:
            self.stats.skipped += 1
        self._write(_ZEROS)
        self._write(bytes(-self._offset % _RECORD))
        return self.stats

    def _walk(self, dir_fd: int, path: str, depth: int) -> None:
        for name in sorted(os.listdir(dir_fd)):
            child = f"{path}/{name}"
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we walk
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                self._directory(dir_fd, name, child, depth)
            elif stat.S_ISREG(mode):
                self._regular(dir_fd, name, child)
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(name, dir_fd=dir_fd)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.EINVAL):
                        continue  # removed or replaced while we walk
                    raise
                self._header(child, st, tarfile.SYMTYPE, linkname=target)
            elif stat.S_ISFIFO(mode):
                self._header(child, st, tarfile.FIFOTYPE)
            elif stat.S_ISCHR(mode):
                self._header(child, st, tarfile.CHRTYPE)
            elif stat.S_ISBLK(mode):
                self._header(child, st, tarfile.BLKTYPE)
            else:
                self.stats.skipped += 1

    def _directory(self, parent_fd: int, name: str, path: str, depth: int) -> None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=parent_fd)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            if e.errno == errno.ELOOP:  # replaced by a symlink while we walk
                return
            raise
        try:
            self._header(path, os.fstat(fd), tarfile.DIRTYPE)
            if inroot.pseudo_fs_name(fd) is not None:
                self.stats.skipped += 1
                return
            if depth >= MAX_DEPTH:
                raise InvalidRequestError(f"{path}: more than {MAX_DEPTH} directories deep")
            self._walk(fd, path, depth + 1)
        finally:
            os.close(fd)

    def _regular(self, parent_fd: int, name: str, path: str) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=parent_fd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                return  # removed or replaced (by a symlink: ELOOP) while we walk
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = self._links.get(key)
                if first is not None:
                    self._header(path, st, tarfile.LNKTYPE, linkname=first)
                    return
                self._links[key] = path
            size = st.st_size
            self._header(path, st, tarfile.REGTYPE, size=size)
            left = size
            while left > 0:
                data = os.read(fd, min(BLOCK, left))
                if not data:
                    break
                self._write(data)
                left -= len(data)
            self.stats.bytes += size - left
            pad = left + (-size % tarfile.BLOCKSIZE)  # zeros for what shrank, then padding
            while pad > 0:
                self._write(bytes(min(pad, BLOCK)))
                pad -= BLOCK
        finally:
            os.close(fd)

    def _header(
        self, name: str, st: os.stat_result, kind: bytes, *, size: int = 0, linkname: str = ""
    ) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid = self._inside(st.st_uid)
        info.gid = self._inside(st.st_gid)
        info.size = size
        info.mtime = int(st.st_mtime)
        info.linkname = linkname
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor = os.major(st.st_rdev)
            info.devminor = os.minor(st.st_rdev)
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self.stats.entries += 1

    def _inside(self, host_id: int) -> int:
        if self._uid_base is None:
            return host_id
        inside = host_id - self._uid_base
        return inside if 0 <= inside < _ID_RANGE else _NOBODY

    def _write(self, data: bytes) -> None:
        if data:
            self._offset += len(data)
            self._out(data)
