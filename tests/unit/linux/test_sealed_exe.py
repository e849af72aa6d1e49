"""The sealed in-memory copy of the runtime binary: same bytes, sealed, unwritable, made once."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from garden.linux import sealed_exe


@pytest.fixture
def program(tmp_path: Path) -> Path:
    """A small executable of our own (a copy of `true`), so a test may change it."""
    src = shutil.which("true")
    assert src is not None
    dst = tmp_path / "fake-runtime"
    shutil.copy2(src, dst)
    return dst


def test_copy_has_the_same_bytes_and_runs(program: Path) -> None:
    path = sealed_exe.sealed_copy(str(program))
    assert path.startswith(f"/proc/{os.getpid()}/fd/")
    assert Path(path).read_bytes() == program.read_bytes()
    assert subprocess.run([path], check=False).returncode == 0


def test_copy_is_sealed_against_writes(program: Path) -> None:
    path = sealed_exe.sealed_copy(str(program))
    assert sealed_exe.is_sealed(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(PermissionError) as e:
            os.write(fd, b"#!/bin/sh\n")
        assert e.value.errno == errno.EPERM
        with pytest.raises(PermissionError):
            os.truncate(fd, 0)
    finally:
        os.close(fd)
    assert not sealed_exe.is_sealed(str(program))


def test_one_copy_per_binary_until_it_changes(program: Path) -> None:
    first = sealed_exe.sealed_copy(str(program))
    assert sealed_exe.sealed_copy(str(program)) == first
    program.write_bytes(program.read_bytes() + b"\0")  # an upgrade on disk
    second = sealed_exe.sealed_copy(str(program))
    assert second != first
    assert Path(second).read_bytes() == program.read_bytes()
