"""users: passwd/group lookups inside a rootfs, never following symlinks out of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from garden.errors import InvalidRequestError
from garden.linux.users import UserIds, lookup_user, read_file_in_root, supplementary_gids

PASSWD = """root:x:0:0:root:/root:/bin/sh
# a comment
vcap:x:1000:1001:vcap:/home/vcap:/bin/sh
broken:x:abc:1:::
nohome:x:2000:2000:::/bin/false
"""
GROUP = "root:x:0:\nvcap:x:1001:\nstaff:x:50:vcap,other\nwheel:x:10:vcap\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def test_lookup_by_name(rootfs: Path) -> None:
    assert lookup_user(rootfs, "vcap") == UserIds(1000, 1001, "/home/vcap")
    assert lookup_user(rootfs, "root") == (0, 0, "/root")
    assert lookup_user(rootfs, "") == (0, 0, "/root")
    assert lookup_user(rootfs, "nohome").home == "/"


def test_lookup_numeric(rootfs: Path) -> None:
    assert lookup_user(rootfs, "1000") == (1000, 1001, "/home/vcap")
    assert lookup_user(rootfs, "1000:7") == (1000, 7, "/home/vcap")
    assert lookup_user(rootfs, "4242:4243") == (4242, 4243, "/")
    assert lookup_user(rootfs, "4242") == (4242, 4242, "/")


def test_lookup_with_group_name(rootfs: Path) -> None:
    assert lookup_user(rootfs, "vcap:staff") == (1000, 50, "/home/vcap")
    with pytest.raises(InvalidRequestError):
        lookup_user(rootfs, "vcap:nogroup")


def test_unknown_user(rootfs: Path) -> None:
    with pytest.raises(InvalidRequestError, match="nobody"):
        lookup_user(rootfs, "nobody")


def test_supplementary_gids(rootfs: Path) -> None:
    assert supplementary_gids(rootfs, "vcap", 1001) == [50, 10]
    assert supplementary_gids(rootfs, "root", 0) == []


def test_absolute_symlink_resolves_inside_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "lib" / "passwd").write_text("app:x:7:8::/app:/bin/sh\n")
    os.symlink("/lib/passwd", root / "etc" / "passwd")  # absolute, as seen inside
    assert lookup_user(root, "app") == (7, 8, "/app")


def test_symlink_escaping_rootfs_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "host-passwd"
    outside.write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    os.symlink(str(outside), root / "etc" / "passwd")
    os.symlink("../../../../../../../" + str(outside), root / "etc" / "group")
    with pytest.raises(InvalidRequestError):
        lookup_user(root, "evil")
    assert read_file_in_root(root, "etc/group") is None


def test_etc_itself_symlinked_out(tmp_path: Path) -> None:
    host_etc = tmp_path / "hostetc"
    host_etc.mkdir()
    (host_etc / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "r"
    root.mkdir()
    os.symlink(str(host_etc), root / "etc")
    with pytest.raises(InvalidRequestError):
        lookup_user(root, "evil")


def test_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert read_file_in_root(tmp_path / "empty", "etc/passwd") is None
    assert lookup_user(tmp_path / "empty", "0") == (0, 0, "/")


def test_fallback_without_openat2(rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import garden.linux.inroot as inroot

    monkeypatch.setattr(inroot, "_openat2_missing", True)
    assert lookup_user(rootfs, "vcap") == (1000, 1001, "/home/vcap")
    os.symlink("/etc/passwd", rootfs / "p2")
    assert read_file_in_root(rootfs, "p2") is None  # symlinks refused by the fallback
