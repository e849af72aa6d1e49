"""Shared helpers of the cgroup implementations: path checks and busy-retrying rmdir."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import trio

from garden.errors import CgroupError
from garden.linux.kfiles import read_text

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
        text = read_text(procs)
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


def read_value(f: Path) -> str | None:
    """The stripped content of a control file, or None if it (or its cgroup) does not exist."""
    try:
        return read_text(f).strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_value(f: Path, value: str) -> None:
    """Write one value to a control file; the OSError is wrapped with what was tried (callers
    that give some errno a meaning catch `CgroupError` and look at `__cause__`)."""
    try:
        f.write_text(value)
    except OSError as e:
        raise CgroupError(f"write {value!r} to {f}", e) from e


def read_flat_keyed(f: Path) -> dict[str, int]:
    """A "key value" per line file (memory.stat, cpu.stat, memory.events) as a dict."""
    text = read_value(f)
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def errno_of(error: CgroupError) -> int | None:
    cause = error.__cause__
    return cause.errno if isinstance(cause, OSError) else None
