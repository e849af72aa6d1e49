"""topdir: the `chattr +T` flag that makes ext4 place a directory's subdirectories as top-level
ones (away from groups full of just-deleted inodes); best effort where there is no such flag."""

from __future__ import annotations

import os
from pathlib import Path

from garden.linux.topdir import FS_TOPDIR_FL, flags, make_topdir, mark_topdir


def test_mark_sets_the_flag_and_keeps_the_others(tmp_path: Path) -> None:
    before = flags(tmp_path)
    assert before is not None, "the test's tmp dir must be on a filesystem with inode flags"
    target = tmp_path / "d"
    target.mkdir()
    assert mark_topdir(target)
    after = flags(target)
    assert after is not None and after & FS_TOPDIR_FL
    assert mark_topdir(target)  # again: no change, no error
    assert flags(target) == after


def test_make_topdir_makes_missing_parents_plain(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    make_topdir(target, 0o700)
    assert (flags(target) or 0) & FS_TOPDIR_FL
    assert not (flags(tmp_path / "a") or 0) & FS_TOPDIR_FL
    assert target.stat().st_mode & 0o777 == 0o700 & ~_umask()
    make_topdir(target)  # exists: left as it is
    assert (flags(target) or 0) & FS_TOPDIR_FL


def test_a_filesystem_without_flags_is_left_alone() -> None:
    shm = Path("/dev/shm") / f"gtest-topdir-{os.getpid()}"
    shm.mkdir()
    try:
        assert mark_topdir(shm) is False  # tmpfs: no inode flags, and no error either
    finally:
        shm.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
