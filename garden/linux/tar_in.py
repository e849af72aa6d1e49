"""Unpacking a tar stream into a directory inside a container's root, member by member.

`tar_reader` parses the stream (headers through tarfile); nothing here trusts tarfile to
extract. Every member is placed here through `garden.linux.inroot` and `garden.linux.newfile`,
so no name, symlink or hardlink in the archive (or planted in the container) leads outside the
container's root:

- Names are relative to the destination. A leading "/" and "." components are dropped (as GNU
  tar does); a ".." component, a NUL or a name longer than PATH_MAX makes the archive bad (400).
  Intermediate components are resolved by the kernel inside the container's root, so a symlink
  made by an earlier member is followed as the container would follow it, never out of it.
- Directories: made (with parents) or, when present, given the member's mode. An existing
  symlink that resolves (inside the root) to a directory is kept, as GNU tar's
  --keep-directory-symlink does; any other non-directory in the way is replaced.
- Regular files: written unnamed and renamed over the name when complete (a file or symlink
  there is replaced, never followed); a directory there is a conflict (409).
- Symlinks: made with the target exactly as stored; it is resolved inside the container when
  used.
- Hardlinks: the target name is checked like a member name and resolved inside the root (never
  following a symlink at its end, as link(2) does not); a directory or another filesystem is
  refused (400).
- FIFOs are made. Character and block devices are skipped (a device node would give a
  privileged container a host device, and an unprivileged one cannot use it), as are types
  tar itself does not know; each skip is counted.

Every entry is owned by the transfer's user (the owners stored in the archive are ignored, as
when that user runs tar) and keeps the member's mode (all 12 bits) and mtime. Directory mtimes
are set after the last member. Members already unpacked stay when a later one fails.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import tarfile
from typing import Final, final

import msgspec

from garden.errors import ConflictError, InvalidRequestError
from garden.linux import inroot
from garden.linux.newfile import NewFile, chmod_nofollow, make_entry
from garden.linux.tar_reader import PieceSource, TarReader
from garden.linux.threadio import BLOCK

log = logging.getLogger("garden.linux.files")

_PATH_MAX = 4096
_BATCH: Final = 64  # iovecs per writev
_RESERVE_FROM: Final = 1 << 20  # members this large get their blocks allocated first


class ExtractStats(msgspec.Struct, kw_only=True):
    members: int = 0
    bytes: int = 0
    skipped_devices: int = 0
    skipped_other: int = 0


def member_parts(name: str) -> list[str]:
    """The components of a member name relative to the destination ([] for the destination
    itself); raises `InvalidRequestError` for names that cannot be placed safely."""
    if "\0" in name:
        raise InvalidRequestError(f"bad tar: member name {name!r} contains a NUL byte")
    if len(name.encode(errors="surrogateescape")) > _PATH_MAX:
        raise InvalidRequestError(f"bad tar: member name {name[:64]!r}... is too long")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidRequestError(f"bad tar: member name {name!r} contains '..'")
    return parts


@final
class TarExtractor:
    """Unpacks one archive into `dest` (a path inside the root, made when missing). `uid`/`gid`
    are the host ids that own every entry made."""

    def __init__(self, root_fd: int, dest: str, *, uid: int, gid: int) -> None:
        self._root = root_fd
        self._dest = dest
        self._uid = uid
        self._gid = gid
        self._dir_times: list[tuple[str, float]] = []
        self.stats = ExtractStats()

    def extract(self, source: PieceSource) -> ExtractStats:
        fd = inroot.make_dirs(self._root, self._dest, uid=self._uid, gid=self._gid)
        try:
            _refuse_pseudo_fs(fd, self._dest)
        finally:
            os.close(fd)
        reader = TarReader(source)
        while (member := reader.next()) is not None:
            self._member(reader, member)
        self._set_dir_times()
        return self.stats

    # -- members --------------------------------------------------------------------------------

    def _member(self, reader: TarReader, m: tarfile.TarInfo) -> None:
        parts = member_parts(m.name)
        self.stats.members += 1
        if m.isdir():
            self._directory(parts, m)
            return
        if not parts:
            raise InvalidRequestError(f"bad tar: member {m.name!r} names the destination itself")
        if m.isreg():
            self._regular(parts, m, reader)
        elif m.issym():
            self._symlink(parts, m)
        elif m.islnk():
            self._hardlink(parts, m)
        elif m.isfifo():
            self._fifo(parts, m)
        elif m.ischr() or m.isblk():
            self.stats.skipped_devices += 1
            log.info("tar-skip-device name=%r dest=%s", m.name, self._dest)
        else:
            self.stats.skipped_other += 1
            log.info("tar-skip-member name=%r type=%r dest=%s", m.name, m.type, self._dest)

    def _path(self, parts: list[str]) -> str:
        return posixpath.join(self._dest, *parts)

    def _parent(self, parts: list[str]) -> int:
        fd = inroot.make_dirs(self._root, self._path(parts[:-1]), uid=self._uid, gid=self._gid)
        try:
            _refuse_pseudo_fs(fd, self._path(parts[:-1]))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_not_dir(self, parent_fd: int, name: str, parts: list[str]) -> None:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise ConflictError(f"{self._path(parts)} is a directory")

    def _directory(self, parts: list[str], m: tarfile.TarInfo) -> None:
        mode = m.mode & 0o7777
        if not parts:  # "./": the destination itself
            fd = inroot.open_in_root(self._root, self._dest, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            self._dir_times.append((self._dest, m.mtime))
            return
        parent = self._parent(parts)
        name = parts[-1]
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                self._existing_dir(parent, name, parts, mode)
            else:
                inroot.own_dir(parent, name, self._uid, self._gid, mode)
        finally:
            os.close(parent)
        self._dir_times.append((self._path(parts), m.mtime))

    def _existing_dir(self, parent: int, name: str, parts: list[str], mode: int) -> None:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            chmod_nofollow(parent, name, mode)
            return
        if stat.S_ISLNK(st.st_mode):
            try:
                os.close(
                    inroot.open_in_root(self._root, self._path(parts), os.O_PATH | os.O_DIRECTORY)
                )
                return  # a symlink to a directory (inside the root): kept
            except OSError:
                pass
        os.unlink(name, dir_fd=parent)
        os.mkdir(name, 0o700, dir_fd=parent)
        inroot.own_dir(parent, name, self._uid, self._gid, mode)

    def _regular(self, parts: list[str], m: tarfile.TarInfo, reader: TarReader) -> None:
        parent = self._parent(parts)
        try:
            self._check_not_dir(parent, parts[-1], parts)
            with NewFile(parent) as f:
                if m.size >= _RESERVE_FROM:
                    f.reserve(m.size)
                batch: list[memoryview] = []
                size = 0
                for piece in reader.data():
                    batch.append(piece)
                    size += len(piece)
                    if size >= BLOCK or len(batch) >= _BATCH:
                        f.writev(batch)
                        self.stats.bytes += size
                        batch, size = [], 0
                if batch:
                    f.writev(batch)
                    self.stats.bytes += size
                f.finish(uid=self._uid, gid=self._gid, mode=m.mode & 0o7777, mtime=m.mtime)
                f.publish(parts[-1])
        finally:
            os.close(parent)

    def _symlink(self, parts: list[str], m: tarfile.TarInfo) -> None:
        if not m.linkname or "\0" in m.linkname:
            raise InvalidRequestError(f"bad tar: symlink {m.name!r} has no valid target")
        parent = self._parent(parts)

        def make(temp: str) -> None:
            os.symlink(m.linkname, temp, dir_fd=parent)
            os.chown(temp, self._uid, self._gid, dir_fd=parent, follow_symlinks=False)
            os.utime(temp, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)

        try:
            self._check_not_dir(parent, parts[-1], parts)
            make_entry(parent, parts[-1], make)
        finally:
            os.close(parent)

    def _hardlink(self, parts: list[str], m: tarfile.TarInfo) -> None:
        target_parts = member_parts(m.linkname)
        if not target_parts:
            raise InvalidRequestError(f"bad tar: hardlink {m.name!r} has no target")
        target = self._path(target_parts)
        try:
            source = inroot.open_in_root(self._root, target, os.O_PATH | os.O_NOFOLLOW)
        except OSError as e:
            raise InvalidRequestError(
                f"bad tar: hardlink {m.name!r} to {m.linkname!r}: {e.strerror}"
            ) from e
        try:
            if stat.S_ISDIR(os.fstat(source).st_mode):
                raise InvalidRequestError(f"bad tar: hardlink {m.name!r} to a directory")
            parent = self._parent(parts)
            try:
                self._check_not_dir(parent, parts[-1], parts)

                def make(temp: str) -> None:
                    os.link(f"/proc/self/fd/{source}", temp, dst_dir_fd=parent)

                try:
                    make_entry(parent, parts[-1], make)
                except OSError as e:
                    if e.errno == errno.EXDEV:
                        raise InvalidRequestError(
                            f"bad tar: hardlink {m.name!r} to {m.linkname!r} crosses filesystems"
                        ) from e
                    raise
            finally:
                os.close(parent)
        finally:
            os.close(source)

    def _fifo(self, parts: list[str], m: tarfile.TarInfo) -> None:
        parent = self._parent(parts)

        def make(temp: str) -> None:
            os.mkfifo(temp, 0o600, dir_fd=parent)
            os.chown(temp, self._uid, self._gid, dir_fd=parent, follow_symlinks=False)
            chmod_nofollow(parent, temp, m.mode & 0o7777)
            os.utime(temp, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)

        try:
            self._check_not_dir(parent, parts[-1], parts)
            make_entry(parent, parts[-1], make)
        finally:
            os.close(parent)

    def _set_dir_times(self) -> None:
        for path, mtime in reversed(self._dir_times):
            try:
                fd = inroot.open_in_root(self._root, path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue  # replaced by a later member: its times are its own
            try:
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)


def _refuse_pseudo_fs(fd: int, path: str) -> None:
    name = inroot.pseudo_fs_name(fd)
    if name is not None:
        raise InvalidRequestError(
            f"{path} is on a {name} filesystem: files cannot be written there"
        )
