"""Tar in and out on temp dirs (no root): the stream reader, member-by-member extraction that
never leaves the root, and packing a tree without following symlinks. A canary directory
outside the root must never change."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from garden.errors import ConflictError, InvalidRequestError
from garden.linux.tar_in import TarExtractor, member_parts
from garden.linux.tar_out import TarPacker
from garden.linux.tar_reader import FileSource, TarReader
from tests.unit.linux.test_inroot import snapshot

UID, GID = os.getuid(), os.getgid()


def build(add: Callable[[tarfile.TarFile], None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        add(t)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in fields.items():
        setattr(info, k, v)
    return info


def add_file(t: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    t.addfile(member(name, size=len(data), mode=mode, mtime=1_600_000_000), io.BytesIO(data))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    return r


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    c = tmp_path / "canary"
    (c / "sub").mkdir(parents=True)
    (c / "hostname").write_text("HOST\n")
    before = snapshot(c)
    yield c
    assert snapshot(c) == before, "something outside the root changed"


def extract(root: Path, data: bytes, dest: str = "/dest") -> TarExtractor:
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        x = TarExtractor(fd, dest, uid=UID, gid=GID)
        x.extract(FileSource(io.BytesIO(data), chunk=1000))  # odd chunks: pieces split
        return x
    finally:
        os.close(fd)


def no_temporaries(top: Path) -> bool:
    return not any(".garden-" in n for _, ds, fs in os.walk(top) for n in ds + fs)


# -- the reader -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reader_reads_what_tarfile_writes(fmt: int) -> None:
    long = "d" * 60 + "/" + "e" * 60 + "/file"  # a ustar prefix, or long-name headers
    very_long = "x" * 150 if fmt != tarfile.USTAR_FORMAT else "short"

    def add(t: tarfile.TarFile) -> None:
        t.addfile(member("top", tarfile.DIRTYPE, mode=0o750))
        add_file(t, long, b"hello" * 300)
        add_file(t, very_long, b"")
        t.addfile(member("ln", tarfile.SYMTYPE, linkname="/" + "t" * (120 if fmt else 10)))

    reader = TarReader(FileSource(io.BytesIO(build(add, fmt)), chunk=777))
    got = []
    while (m := reader.next()) is not None:
        data = b"".join(bytes(p) for p in reader.data()) if m.isreg() else b""
        got.append((m.name, m.type, data, m.linkname))
    assert [g[0] for g in got] == ["top", long, very_long, "ln"]
    assert got[1][2] == b"hello" * 300
    assert got[3][3].startswith("/t")


def test_reader_skips_unread_data_and_stops_at_the_end() -> None:
    def add(t: tarfile.TarFile) -> None:
        add_file(t, "a", b"A" * 5000)
        add_file(t, "b", b"B")

    data = build(add) + b"trailing garbage is never read"
    reader = TarReader(FileSource(io.BytesIO(data)))
    assert reader.next().name == "a"  # type: ignore[union-attr]
    b = reader.next()
    assert b is not None
    assert b"".join(bytes(p) for p in reader.data()) == b"B"
    assert reader.next() is None


@pytest.mark.parametrize("data", [b"", bytes(1024), bytes(10240)])
def test_empty_archives(data: bytes) -> None:
    assert TarReader(FileSource(io.BytesIO(data))).next() is None


def test_bad_archives_are_invalid_requests() -> None:
    good = build(lambda t: add_file(t, "a", b"x" * 2000))
    corrupt = bytearray(good)
    corrupt[150] ^= 0xFF  # inside the checksum field
    for data in [good[:700], bytes(corrupt), b"not a tar at all" * 40]:
        reader = TarReader(FileSource(io.BytesIO(data)))
        with pytest.raises(InvalidRequestError, match="bad tar"):
            m = reader.next()
            while m is not None:
                for _ in reader.data():
                    pass
                m = reader.next()


def test_global_pax_headers_apply_and_sparse_is_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"mtime": "1234"}
    ) as t:
        add_file(t, "a", b"x")
    reader = TarReader(FileSource(io.BytesIO(buf.getvalue())))
    m = reader.next()
    assert m is not None and m.mtime == 1234.0
    sparse = member("s", tarfile.GNUTYPE_SPARSE, size=0).tobuf(tarfile.GNU_FORMAT)
    with pytest.raises(InvalidRequestError, match="sparse"):
        TarReader(FileSource(io.BytesIO(sparse + bytes(1024)))).next()


# -- extraction ------------------------------------------------------------------------------


def test_member_parts() -> None:
    assert member_parts("a/b/c") == ["a", "b", "c"]
    assert member_parts("/abs//x/./y/") == ["abs", "x", "y"]
    assert member_parts("./") == []
    for bad in ["../x", "a/../../b", "a/..", "/..", "a\0b"]:
        with pytest.raises(InvalidRequestError):
            member_parts(bad)


def test_extract_tree_keeps_modes_links_and_times(root: Path, canary: Path) -> None:
    def add(t: tarfile.TarFile) -> None:
        t.addfile(member("./", tarfile.DIRTYPE, mode=0o751))
        t.addfile(member("a", tarfile.DIRTYPE, mode=0o700, mtime=1_500_000_000))
        t.addfile(member("a/b", tarfile.DIRTYPE, mode=0o755))
        add_file(t, "a/b/tool", b"#!/bin/sh\n", mode=0o4755)
        add_file(t, "deep/er/file", b"made parents")  # no directory members for these
        t.addfile(member("rel", tarfile.SYMTYPE, linkname="a/b/tool"))
        t.addfile(member("abs", tarfile.SYMTYPE, linkname=str(canary / "hostname")))
        t.addfile(member("hard", tarfile.LNKTYPE, linkname="a/b/tool"))
        t.addfile(member("fifo", tarfile.FIFOTYPE, mode=0o640))
        t.addfile(member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3))

    x = extract(root, build(add))
    d = root / "dest"
    assert stat.S_IMODE(d.stat().st_mode) == 0o751
    assert stat.S_IMODE((d / "a").stat().st_mode) == 0o700
    assert (d / "a").stat().st_mtime == 1_500_000_000
    tool = d / "a" / "b" / "tool"
    assert tool.read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o4755
    assert tool.stat().st_mtime == 1_600_000_000
    assert tool.stat().st_uid == UID
    assert (d / "deep" / "er" / "file").read_bytes() == b"made parents"
    assert os.readlink(d / "rel") == "a/b/tool"
    assert os.readlink(d / "abs") == str(canary / "hostname")  # stored as given
    assert os.path.samefile(d / "hard", tool)
    assert stat.S_ISFIFO((d / "fifo").lstat().st_mode)
    assert stat.S_IMODE((d / "fifo").lstat().st_mode) == 0o640
    assert not (d / "dev").exists()
    assert x.stats.skipped_devices == 1
    assert no_temporaries(root)


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "ok/../../../escape"])
def test_dotdot_members_are_refused(root: Path, canary: Path, name: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"\.\."):
        extract(root, build(lambda t: add_file(t, name, b"x")))
    assert not (root / "escape").exists()


def test_absolute_names_land_under_the_destination(root: Path, canary: Path) -> None:
    extract(root, build(lambda t: add_file(t, str(canary / "hostname"), b"evil")))
    assert (root / "dest" / str(canary).lstrip("/") / "hostname").read_bytes() == b"evil"


def test_symlinks_planted_or_archived_never_lead_out(root: Path, canary: Path) -> None:
    os.symlink(str(canary), root / "dest-planted")  # made by the container, say
    os.symlink("/", root / "etc" / "toroot")
    with pytest.raises(FileNotFoundError):  # the link leads nowhere inside: mkdir -p fails
        extract(root, build(lambda t: add_file(t, "x", b"evil")), dest="/dest-planted/sub")
    (root / str(canary).lstrip("/")).mkdir(parents=True)  # now it leads somewhere inside

    def add(t: tarfile.TarFile) -> None:
        t.addfile(member("up", tarfile.SYMTYPE, linkname="/../../.."))
        add_file(t, "up/etc/passwd", b"inside")
        t.addfile(member("host", tarfile.SYMTYPE, linkname=str(canary)))
        add_file(t, "host/hostname", b"evil")
        add_file(t, "host/sub/new", b"evil")

    extract(root, build(add))
    assert (root / "etc" / "passwd").read_bytes() == b"inside"  # the root's own /etc
    assert (root / str(canary).lstrip("/") / "hostname").read_bytes() == b"evil"
    extract(root, build(lambda t: add_file(t, "x", b"evil")), dest="/dest-planted/sub")
    assert (root / str(canary).lstrip("/") / "sub" / "x").read_bytes() == b"evil"
    extract(root, build(lambda t: add_file(t, f"toroot{canary}/hostname", b"evil")), "/etc")
    assert (root / str(canary).lstrip("/") / "hostname").read_bytes() == b"evil"


@pytest.mark.parametrize(
    "target", ["../../canary/hostname", "/../../../canary/hostname", "/proc/self/root/etc/passwd"]
)
def test_hardlinks_out_are_refused(root: Path, canary: Path, target: str) -> None:
    with pytest.raises(InvalidRequestError):
        extract(root, build(lambda t: t.addfile(member("h", tarfile.LNKTYPE, linkname=target))))
    assert not (root / "dest" / "h").exists()
    assert (canary / "hostname").stat().st_nlink == 1


def test_hardlink_to_an_absolute_host_path_resolves_inside(root: Path, canary: Path) -> None:
    (root / "dest" / str(canary).lstrip("/")).mkdir(parents=True)
    (root / "dest" / str(canary).lstrip("/") / "hostname").write_text("inside")
    link = member("h", tarfile.LNKTYPE, linkname=str(canary / "hostname"))
    extract(root, build(lambda t: t.addfile(link)))
    assert (root / "dest" / "h").read_text() == "inside"
    assert (canary / "hostname").stat().st_nlink == 1


def test_hardlink_to_a_directory_is_refused(root: Path) -> None:
    def add(t: tarfile.TarFile) -> None:
        t.addfile(member("d", tarfile.DIRTYPE))
        t.addfile(member("h", tarfile.LNKTYPE, linkname="d"))

    with pytest.raises(InvalidRequestError, match="directory"):
        extract(root, build(add))


def test_existing_entries(root: Path, canary: Path) -> None:
    d = root / "dest"
    (d / "adir").mkdir(parents=True)
    (d / "real").mkdir()
    os.symlink("real", d / "dirlink")  # kept: a symlink to a directory
    (d / "afile").write_text("old")
    os.symlink(str(canary / "hostname"), d / "filelink")  # replaced, never followed
    os.symlink("/etc", d / "abslink")

    def add(t: tarfile.TarFile) -> None:
        t.addfile(member("dirlink", tarfile.DIRTYPE))
        add_file(t, "dirlink/in", b"through the kept link")
        t.addfile(member("afile", tarfile.DIRTYPE, mode=0o700))  # a file in the way: replaced
        add_file(t, "filelink", b"new file")
        add_file(t, "abslink/x", b"via absolute link")

    extract(root, build(add))
    assert os.readlink(d / "dirlink") == "real"
    assert (d / "real" / "in").read_bytes() == b"through the kept link"
    assert (d / "afile").is_dir()
    assert not (d / "filelink").is_symlink()
    assert (d / "filelink").read_bytes() == b"new file"
    assert (root / "etc" / "x").read_bytes() == b"via absolute link"
    with pytest.raises(ConflictError):
        extract(root, build(lambda t: add_file(t, "adir", b"x")))
    assert (d / "adir").is_dir()


def test_empty_archive_makes_the_destination(root: Path) -> None:
    extract(root, b"", dest="/new/place")
    assert (root / "new" / "place").is_dir()


def test_a_truncated_member_leaves_nothing_behind(root: Path) -> None:
    def add(t: tarfile.TarFile) -> None:
        add_file(t, "first", b"complete")
        add_file(t, "second", b"y" * 100_000)

    data = build(add)
    with pytest.raises(InvalidRequestError, match="bad tar"):
        extract(root, data[:50_000])
    assert (root / "dest" / "first").read_bytes() == b"complete"
    assert not (root / "dest" / "second").exists()
    assert no_temporaries(root)


def test_destination_on_procfs_is_refused(tmp_path: Path) -> None:
    fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(InvalidRequestError, match="proc"):
            TarExtractor(fd, "/self", uid=UID, gid=GID).extract(FileSource(io.BytesIO(b"")))
    finally:
        os.close(fd)


# -- packing -------------------------------------------------------------------------------


def pack(
    top: Path, prefix: str, uid_base: int | None = None
) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    out = io.BytesIO()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        TarPacker(out.write, uid_base=uid_base).pack(fd, prefix)
    finally:
        os.close(fd)
    assert len(out.getvalue()) % tarfile.RECORDSIZE == 0
    out.seek(0)
    with tarfile.open(fileobj=out) as t:
        members = t.getmembers()
        data = {m.name: t.extractfile(m).read() for m in members if m.isreg()}  # type: ignore[union-attr]
    return members, data


def test_pack_tree_without_following_symlinks(tmp_path: Path, canary: Path) -> None:
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_bytes(b"data" * 1000)
    (top / "a" / "b" / "f").chmod(0o4750)
    os.link(top / "a" / "b" / "f", top / "twin")
    os.symlink(str(canary), top / "out")  # must stay a symlink entry
    os.symlink("/", top / "slash")
    os.mkfifo(top / "fifo")
    members, data = pack(top, "top")
    by_name = {m.name: m for m in members}
    assert members[0].name == "top" and members[0].isdir()
    assert data["top/a/b/f"] == b"data" * 1000
    assert by_name["top/a/b/f"].mode == 0o4750
    assert by_name["top/twin"].islnk() and by_name["top/twin"].linkname == "top/a/b/f"
    assert by_name["top/out"].issym() and by_name["top/out"].linkname == str(canary)
    assert by_name["top/slash"].issym()
    assert by_name["top/fifo"].isfifo()
    assert not any(name.startswith("top/out/") for name in by_name)
    names, _ = pack(top, "")
    assert names[0].name == "." and names[1].name.startswith("./")


def test_pack_writes_owners_as_the_container_sees_them(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    members, _ = pack(tmp_path, "", uid_base=UID - 5 if UID >= 5 else None)
    f = next(m for m in members if m.name == "./f")
    assert f.uid == (5 if UID >= 5 else UID)
    members, _ = pack(tmp_path, "", uid_base=UID + 1)  # below the map: nobody
    assert next(m for m in members if m.name == "./f").uid == 65534


def test_pack_skips_the_contents_of_procfs() -> None:
    fd = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY)
    out = io.BytesIO()
    try:
        stats = TarPacker(out.write, uid_base=None).pack(fd, "self")
    finally:
        os.close(fd)
    assert stats.entries == 1 and stats.skipped == 1
