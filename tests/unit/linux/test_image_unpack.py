"""The layer unpacker's checks (garden/linux/images/unpack.py): members that would escape
the layer are refused, the rest lands as the tar says (without root: no owners or devices)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from garden.linux.images.unpack import LayerError, member_path, unpack_layer
from tests.imagebuild import Entry, layer_tar


def unpack(tmp_path: Path, entries: list[Entry]) -> Path:
    dest = tmp_path / "layer"
    dest.mkdir()
    unpack_layer(io.BytesIO(layer_tar(entries)), dest, as_root=False)
    return dest


@pytest.mark.parametrize(
    ("name", "rel"), [("./a/b", "a/b"), ("a//b/", "a/b"), ("./", None), ("a/./b", "a/b")]
)
def test_member_path(name: str, rel: str | None) -> None:
    assert member_path(name) == rel


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/.."])
def test_member_path_refuses(name: str) -> None:
    with pytest.raises(LayerError):
        member_path(name)


@pytest.mark.parametrize(
    "entries",
    [
        [Entry("../x")],
        [Entry("/abs")],
        [Entry("d", "symlink", link="/"), Entry("d/x")],
        [Entry("d", "symlink", link="."), Entry("d/x")],
        [Entry("h", "hardlink", link="../outside")],
        [Entry("h", "hardlink", link="not-here")],
        [Entry("d", "dir"), Entry("h", "hardlink", link="d")],
        [Entry("d", "symlink", link="/etc"), Entry("h", "hardlink", link="d/passwd")],
        [Entry("f"), Entry("f/x")],
    ],
)
def test_refuses_escaping_members(tmp_path: Path, entries: list[Entry]) -> None:
    with pytest.raises(LayerError):
        unpack(tmp_path, entries)


def test_unpacks_files_links_and_modes(tmp_path: Path) -> None:
    dest = unpack(
        tmp_path,
        [
            Entry("bin", "dir", mode=0o755),
            Entry("bin/tool", data=b"#!/bin/sh\n", mode=0o4755),
            Entry("bin/alias", "symlink", link="tool"),
            Entry("bin/hard", "hardlink", link="bin/tool"),
            Entry("deep/er/file", data=b"x"),  # parents made
            Entry("fifo", "fifo"),
            Entry("bin/tool", data=b"replaced", mode=0o755),  # a later member wins
        ],
    )
    assert (dest / "bin" / "tool").read_bytes() == b"replaced"
    assert os.readlink(dest / "bin" / "alias") == "tool"
    assert (dest / "deep" / "er" / "file").read_bytes() == b"x"
    assert os.stat(dest / "bin" / "hard").st_ino != os.stat(dest / "bin" / "tool").st_ino
    assert (dest / "fifo").is_fifo()


def test_hardlink_shares_the_inode(tmp_path: Path) -> None:
    dest = unpack(tmp_path, [Entry("a", data=b"1"), Entry("b", "hardlink", link="a")])
    assert os.stat(dest / "a").st_ino == os.stat(dest / "b").st_ino


def test_whiteouts_need_no_target(tmp_path: Path) -> None:
    # Without root the whiteout device is not made, but the name is checked and cleared.
    dest = unpack(tmp_path, [Entry("x", data=b"1"), Entry(".wh.x"), Entry("d/.wh..wh..opq")])
    assert not (dest / "x").exists()
    assert (dest / "d").is_dir()
