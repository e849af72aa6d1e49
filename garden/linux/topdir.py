"""Directories whose subdirectories ext4 places as it places top-level ones (`chattr +T`).

Why: on ext4 without a journal (these machines' root filesystem), allocating an inode skips
every inode of its block group that was freed in the last 10 s, 300 s while the inode table
block is dirty (`recently_deleted()` in the kernel's ialloc.c): each skip is a page-cache
lookup. A new file goes to the first group of its directory's flex group with a free inode, so
where the server has just deleted things (a destroyed container's bundle, deleted by the
trash), every file and dir it makes there walks past all of them: 0.3-3 ms of kernel CPU per
inode: a run's process dir and files took 3.7-7.3 ms of kernel CPU (docs/performance.md).
A subdirectory of a directory flagged "top of hierarchy" is placed by the Orlov allocator
instead, in the flex group with the fewest directories (usually one nothing was deleted from),
and its files follow it there. The server flags the containers dir and each container's
processes dir.

Best effort: a filesystem without the flag (tmpfs, xfs...) just keeps its own placement.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

FS_IOC_GETFLAGS: Final = 0x80086601
FS_IOC_SETFLAGS: Final = 0x40086602
FS_TOPDIR_FL: Final = 0x00020000


def flags(path: Path) -> int | None:
    """The inode flags of `path` (`lsattr`), or None where the filesystem has none."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(struct.unpack_from("i", buf)[0])


def mark_topdir(path: Path) -> bool:
    """Flag the directory `path` as a top of hierarchy; False where it cannot be."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        current = struct.unpack_from("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8)))[0]
        if not current & FS_TOPDIR_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", current | FS_TOPDIR_FL) + bytes(4))
    except OSError as e:
        log.debug("topdir-unsupported path=%s error=%s", path, e)
        return False
    finally:
        os.close(fd)
    return True


def make_topdir(path: Path, mode: int = 0o755) -> None:
    """`mkdir -p path` (parents plain), flagged as a top of hierarchy if it was made here."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            return
    mark_topdir(path)
