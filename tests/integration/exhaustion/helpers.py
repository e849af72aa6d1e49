"""Shared parts of the exhaustion tests: a server process whose state dir is a small tmpfs
that a test can fill and free."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from tests.integration.conftest import ServerProcess, force_cleanup, new_tag


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (mode 0711: containers' mapped root traverses it)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "garden-test", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in `directory` until its filesystem has no free block left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


@contextmanager
def server_on_tmpfs(root: Path, size: str = "64m") -> Iterator[ServerProcess]:
    """A `garden server` process whose state dir is a tmpfs of `size` at `root/state`."""
    with small_tmpfs(root / "state", size) as state:
        sp = ServerProcess(state, new_tag())
        try:
            yield sp
        finally:
            if sp.proc is not None and sp.proc.poll() is None:
                sp.kill()
            trio.run(force_cleanup, sp.config)
