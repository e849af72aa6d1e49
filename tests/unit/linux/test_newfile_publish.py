"""`NewFile.publish`: a new name is linked directly (a killed server can leave no temporary
name behind); only a replacement passes through a temporary name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from garden import faults
from garden.linux.newfile import NewFile


def publish(directory: Path, name: str, data: bytes) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with NewFile(fd) as f:
            f.write(data)
            f.publish(name)
    finally:
        os.close(fd)


@pytest.fixture
def reached(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    points: list[str] = []
    monkeypatch.setattr(faults, "reached", points.append)
    return points


def test_publish_new_name_leaves_no_temporary_window(tmp_path: Path, reached: list[str]) -> None:
    publish(tmp_path, "data", b"new")
    assert (tmp_path / "data").read_bytes() == b"new"
    assert "files:after-link" not in reached
    assert os.listdir(tmp_path) == ["data"]


def test_publish_replacement_renames_over_old_entry(tmp_path: Path, reached: list[str]) -> None:
    (tmp_path / "data").write_bytes(b"old")
    publish(tmp_path, "data", b"new")
    assert (tmp_path / "data").read_bytes() == b"new"
    assert reached == ["files:after-link"]
    assert os.listdir(tmp_path) == ["data"]
