"""inroot: paths resolved inside a root the way the kernel resolves them inside a container,
on temp dirs (no root needed). A canary directory next to the root must never change."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from garden.linux import inroot


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "hostname").write_text("inside\n")
    return r


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    c = tmp_path / "canary"
    c.mkdir()
    (c / "hostname").write_text("HOST\n")
    before = snapshot(c)
    yield c
    assert snapshot(c) == before, "something outside the root changed"


def snapshot(top: Path) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            st = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[str(p.relative_to(top))] = (st.st_mode, data)
    return out


def read(root_fd: int, path: str) -> bytes:
    fd = inroot.open_in_root(root_fd, path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read()


@pytest.fixture
def root_fd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize(
    "path", ["etc/hostname", "/etc/hostname", "../../../etc/hostname", "/../etc/./hostname"]
)
def test_dotdot_stops_at_the_root(root_fd: int, canary: Path, path: str) -> None:
    assert read(root_fd, path) == b"inside\n"


def test_absolute_symlinks_and_chains_start_again_at_the_root(
    root: Path, root_fd: int, canary: Path
) -> None:
    os.symlink(str(canary / "hostname"), root / "direct")  # a host path: dangles inside
    os.symlink("/etc", root / "etc-abs")
    os.symlink("etc-abs/../etc-abs/hostname", root / "chain")
    os.symlink("/../../..", root / "up")
    os.symlink("/", root / "slash")
    with pytest.raises(FileNotFoundError):
        read(root_fd, "direct")
    assert read(root_fd, "chain") == b"inside\n"
    assert read(root_fd, "up/etc/hostname") == b"inside\n"
    with pytest.raises(FileNotFoundError):
        read(root_fd, f"slash{canary}/hostname")


def test_symlink_loop_is_eloop(root: Path, root_fd: int) -> None:
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(OSError) as info:
        read(root_fd, "a")
    assert info.value.errno == errno.ELOOP


def test_magic_links_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    os.symlink(f"/proc/{os.getpid()}/root", root / "hostroot")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            read(fd, "hostroot/etc/hostname")
    finally:
        os.close(fd)
    procfd = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            inroot.open_in_root(procfd, "self/root/etc/hostname", os.O_RDONLY)
        assert info.value.errno == errno.ELOOP
    finally:
        os.close(procfd)


def test_make_dirs_creates_inside_only(root: Path, root_fd: int, canary: Path) -> None:
    os.symlink(str(canary), root / "outside")  # dangles inside the root
    os.symlink("/etc", root / "etclink")
    uid, gid = os.getuid(), os.getgid()
    with pytest.raises(FileNotFoundError):
        inroot.make_dirs(root_fd, "/outside/new", uid=uid, gid=gid)
    fd = inroot.make_dirs(root_fd, "/etclink/../a/b/../c", uid=uid, gid=gid, mode=0o750)
    os.close(fd)
    assert (root / "a" / "c").is_dir()
    assert (root / "a" / "b").is_dir()
    assert (root / "a").stat().st_mode & 0o7777 == 0o750
    fd = inroot.make_dirs(root_fd, "/etclink/sub", uid=uid, gid=gid)
    os.close(fd)
    assert (root / "etc" / "sub").is_dir()
    with pytest.raises(NotADirectoryError):
        inroot.make_dirs(root_fd, "/etc/hostname/x", uid=uid, gid=gid)


def test_read_file_in_root(root: Path) -> None:
    assert inroot.read_file_in_root(root, "/etc/hostname") == b"inside\n"
    assert inroot.read_file_in_root(root, "/etc") is None  # not a regular file
    assert inroot.read_file_in_root(root, "/nope") is None
    assert inroot.read_file_in_root(root, "/etc/hostname", limit=3) == b"ins"


def test_fallback_without_openat2_refuses_symlinks_and_dotdot(
    root: Path, root_fd: int, canary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inroot, "_openat2_missing", True)
    os.symlink("/etc", root / "etclink")
    os.symlink("hostname", root / "etc" / "alias")
    assert read(root_fd, "/etc/hostname") == b"inside\n"
    for path in ["etclink/hostname", "etc/alias", "etc/../etc/hostname"]:
        with pytest.raises(OSError) as info:
            read(root_fd, path)
        assert info.value.errno == errno.ELOOP, path
    fd = inroot.open_in_root(root_fd, "etc/alias", os.O_PATH | os.O_NOFOLLOW)
    os.close(fd)  # the symlink itself, when asked for


def test_pseudo_filesystems_are_named(tmp_path: Path) -> None:
    fd = os.open("/proc/self", os.O_PATH)
    try:
        assert inroot.pseudo_fs_name(fd) == "proc"
    finally:
        os.close(fd)
    fd = os.open(tmp_path, os.O_PATH)
    try:
        assert inroot.pseudo_fs_name(fd) is None
    finally:
        os.close(fd)
