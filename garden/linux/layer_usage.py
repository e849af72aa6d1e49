"""What a container without a disk limit has written: a walk of its overlay upper dir (bytes
of allocated blocks and inodes, hard links counted once). Cost grows with the files the
container made; the lower layer is never walked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from garden.linux.plan import DiskUsage

# Empty mount points that the server itself puts in every upper dir (rootfs._MOUNTPOINTS).
_OWN_ENTRIES = frozenset({".catatonit", "proc", "sys", "dev", "tmp"})


def upper_usage(upper: Path) -> DiskUsage | None:
    """None if `upper` does not exist."""
    if not upper.is_dir():
        return None
    seen: set[int] = set()
    total_bytes = 0
    stack = [str(upper)]
    top = True
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                if top and entry.name in _OWN_ENTRIES and _is_empty(entry.path, st):
                    continue
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
                total_bytes += st.st_blocks * 512
        top = False
    return DiskUsage(bytes_used=total_bytes, inodes_used=len(seen))


def _is_empty(path: str, st: os.stat_result) -> bool:
    if stat.S_ISDIR(st.st_mode):
        try:
            with os.scandir(path) as it:
                return next(it, None) is None
        except OSError:
            return True
    return st.st_size == 0
