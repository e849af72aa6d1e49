"""Reading kernel-made files with plain system calls: whole content, errors as open() has them."""

from __future__ import annotations

from pathlib import Path

import pytest

from garden.linux.kfiles import read_bytes, read_text


def test_reads_small_and_large_files_whole(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"12345\n")
    assert read_bytes(small) == b"12345\n"
    large = tmp_path / "large"
    content = bytes(range(256)) * 1000  # more than one read
    large.write_bytes(content)
    assert read_bytes(large) == content
    assert read_text(small) == "12345\n"


def test_reads_proc_files() -> None:
    assert read_bytes("/proc/self/stat").split()[0].isdigit()


def test_missing_file_raises_like_open(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_bytes(tmp_path / "absent")
    with pytest.raises(NotADirectoryError):
        (tmp_path / "f").write_text("x")
        read_bytes(tmp_path / "f" / "g")
