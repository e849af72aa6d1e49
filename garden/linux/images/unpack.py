"""Unpacking one layer tar into an empty directory, strictly: the layer's whiteouts become
overlayfs whiteouts (a 0/0 character device) and its opaque markers the
`trusted.overlay.opaque=y` xattr, so the directory can be stacked as an overlay lower layer
as it is. Members that would land outside the directory are refused with `LayerError`:
absolute names, `..`, a path through a symlink (of this layer), a hardlink to anything but a
file already unpacked from this layer. The caller unpacks into a temp dir and deletes it on
any error, so a refused layer leaves nothing behind.

Blocking: call it in a worker thread. Owners, devices and xattrs need root (`as_root=False`
skips them, for tests without root).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
from pathlib import Path
from typing import IO, NamedTuple

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# Extended attributes a layer may carry; anything else (trusted.*, in particular the
# overlay's own) is dropped, so a layer cannot forge whiteouts or redirects.
_ALLOWED_XATTRS = ("user.", "security.capability")
_BLOCK = 1 << 20


class LayerError(ValueError):
    """A layer member that is refused; the message names it and says why."""


class Unpacked(NamedTuple):
    bytes: int  # of regular files
    inodes: int  # entries made


def member_path(name: str) -> str | None:
    """The member's path relative to the layer root ("" -> None for the root itself);
    `LayerError` for an absolute name or one with `..`."""
    if name.startswith("/"):
        raise LayerError(f"member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"member {name!r} goes up with '..'")
    if "\0" in name:
        raise LayerError(f"member {name!r} has a NUL byte")
    return "/".join(parts) or None


class _Unpacker:
    def __init__(self, dest: Path, as_root: bool) -> None:
        self.dest = str(dest)
        self.as_root = as_root
        self.dir_times: list[tuple[str, float]] = []
        self.bytes = 0
        self.inodes = 0

    def abs(self, rel: str) -> str:
        return os.path.join(self.dest, rel)

    def ensure_parents(self, rel: str, member: str) -> None:
        """Every parent of `rel` is a real directory of the layer (made when missing)."""
        parts = rel.split("/")[:-1]
        path = self.dest
        for part in parts:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise LayerError(
                    f"member {member!r} goes through the symlink {path[len(self.dest) :]}"
                )
            if not stat.S_ISDIR(st.st_mode):
                raise LayerError(f"member {member!r} has a parent that is not a directory")

    def clear(self, path: str, keep_dir: bool) -> None:
        """Make room for a new entry at `path` (a later member replaces an earlier one)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not keep_dir:
                shutil.rmtree(path)
        else:
            os.unlink(path)

    def member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = member_path(m.name)
        if rel is None:
            if m.isdir():
                self.metadata(self.dest, m)
            return
        self.ensure_parents(rel, m.name)
        parent, base = posixpath.split(rel)
        if base == OPAQUE_MARKER:
            if self.as_root:
                os.setxattr(self.abs(parent) if parent else self.dest, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk and the like): nothing to unpack
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(posixpath.join(parent, base[len(WHITEOUT_PREFIX) :]), m.name)
            return
        path = self.abs(rel)
        self.clear(path, keep_dir=m.isdir())
        if m.isdir():
            if not os.path.isdir(path):
                os.mkdir(path, 0o755)
        elif m.isreg():
            self.regular(tf, m, path)
        elif m.issym():
            os.symlink(m.linkname, path)
        elif m.islnk():
            self.hardlink(m, path)
            self.inodes += 1
            return  # the same inode: its metadata is already set
        elif m.ischr() or m.isblk() or m.isfifo():
            self.device(m, path)
        else:
            raise LayerError(f"member {m.name!r} has an unsupported type {m.type!r}")
        self.inodes += 1
        self.metadata(path, m)

    def whiteout(self, rel: str, member: str) -> None:
        name = posixpath.basename(rel)
        if not name or name in (".", ".."):
            raise LayerError(f"whiteout {member!r} names nothing")
        path = self.abs(rel)
        self.clear(path, keep_dir=False)
        if self.as_root:
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        self.inodes += 1

    def regular(self, tf: tarfile.TarFile, m: tarfile.TarInfo, path: str) -> None:
        src = tf.extractfile(m)
        assert src is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, _BLOCK)
        self.bytes += m.size

    def hardlink(self, m: tarfile.TarInfo, path: str) -> None:
        target = member_path(m.linkname)
        if target is None:
            raise LayerError(f"hardlink {m.name!r} points at the layer root")
        self.ensure_parents(target, m.name)
        src = self.abs(target)
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise LayerError(
                f"hardlink {m.name!r} points at {m.linkname!r}, which is not in this layer"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise LayerError(f"hardlink {m.name!r} points at a directory")
        os.link(src, path, follow_symlinks=False)

    def device(self, m: tarfile.TarInfo, path: str) -> None:
        if m.isfifo():
            os.mkfifo(path, 0o600)
            return
        if not self.as_root:
            return
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))

    def metadata(self, path: str, m: tarfile.TarInfo) -> None:
        if not os.path.lexists(path):
            return  # a device skipped without root
        if self.as_root:
            os.lchown(path, m.uid, m.gid)
            for key, value in m.pax_headers.items():
                if key.startswith("SCHILY.xattr."):
                    name = key[len("SCHILY.xattr.") :]
                    if name.startswith(_ALLOWED_XATTRS):
                        raw = value.encode("utf-8", "surrogateescape")
                        os.setxattr(path, name, raw, follow_symlinks=False)
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)  # after chown, which clears setuid/setgid
        if m.isdir():
            self.dir_times.append((path, m.mtime))
        else:
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def finish(self) -> None:
        for path, mtime in reversed(self.dir_times):
            if os.path.isdir(path) and not os.path.islink(path):
                os.utime(path, (mtime, mtime))


def unpack_layer(stream: IO[bytes], dest: Path, *, as_root: bool = True) -> Unpacked:
    """Unpack the (uncompressed) tar read from `stream` into the empty directory `dest`.
    `LayerError` for a refused member, `tarfile.TarError` for a broken tar; on either the
    caller removes `dest`."""
    unpacker = _Unpacker(dest, as_root)
    with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tf:
        for m in tf:
            unpacker.member(tf, m)
    unpacker.finish()
    return Unpacked(bytes=unpacker.bytes, inodes=unpacker.inodes)
