"""Shared helpers of the cgroup implementations: path checks and busy-retrying rmdir."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import trio

from garden.errors import CgroupError

_RETRY_DELAY = 0.005


def split_path(path: str) -> str:
    """A cgroup path ("/garden/x") as a relative path ("garden/x"); refuses "..", "" and "/"."""
    rel = path.strip("/")
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        raise CgroupError(f"cgroup path {path!r}", "not a valid cgroup path")
    return rel


def subdirs(d: Path) -> list[str]:
    try:
        with os.scandir(d) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def read_pids(procs: Path) -> list[int]:
    try:
        text = procs.read_text()
    except FileNotFoundError:
        return []
    return [int(line) for line in text.split()]


async def rmdir_tree(d: Path, deadline: float) -> None:
    """rmdir `d` after its sub-cgroups (depth first); absent is done; EBUSY is retried (the
    kernel frees a cgroup a moment after its last process exits) until `deadline`."""
    for name in subdirs(d):
        await rmdir_tree(d / name, deadline)
    while True:
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or trio.current_time() >= deadline:
                raise CgroupError(f"rmdir {d}", e) from e
        # No event tells when a busy cgroup becomes removable (v1 has no populated notify that
        # covers zombies), so this one wait is a short bounded retry.
        await trio.sleep(_RETRY_DELAY)
