"""files: path rules, writing a raw upload inside a root, opening sources, error mapping, and
the byte streams between trio and worker threads (temp dirs, no root)."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from garden import errors as e
from garden.linux import files
from garden.linux.threadio import BLOCK, BlockWriter, BodyReader, feed, produced_blocks
from tests.unit.linux.test_inroot import snapshot

UID, GID = os.getuid(), os.getgid()


class Blocks:
    """A `BodyReader` stand-in: the given blocks, then the end (or an error)."""

    def __init__(self, *blocks: list[bytes], error: Exception | None = None) -> None:
        self._blocks = list(blocks)
        self._error = error

    def next_block(self) -> list[bytes] | None:
        if self._blocks:
            return self._blocks.pop(0)
        if self._error is not None:
            raise self._error
        return None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    return r


@pytest.fixture
def root_fd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    c = tmp_path / "canary"
    c.mkdir()
    (c / "hostname").write_text("HOST\n")
    before = snapshot(c)
    yield c
    assert snapshot(c) == before, "something outside the root changed"


OWNER = files.Owner(UID, GID, None, "/home/me")


def write(root_fd: int, path: str, reader: Blocks) -> None:
    files.write_file(root_fd, path, OWNER, reader)  # type: ignore[arg-type]


def test_paths() -> None:
    assert files.in_home("/a/b", "/home/x") == "/a/b"
    assert files.in_home("a/b", "/home/x") == "/home/x/a/b"
    assert files.in_home("a", "") == "/a"
    for bad in ["", "a\0b"]:
        with pytest.raises(e.InvalidRequestError):
            files.in_home(bad, "/")
    assert files.split_file_path("/a/b") == ("/a", "b")
    assert files.split_file_path("b") == ("/", "b")
    for only_dir in ["/", "/a/", "/a/.", "/a/.."]:
        assert files.split_file_path(only_dir) == ("", "")
    assert files.tar_prefix("/var/log") == "log"
    assert files.tar_prefix("/var/log/") == ""
    assert files.tar_prefix("/") == ""
    assert files.tar_prefix("/var/.") == ""


def test_write_file_makes_parents_and_replaces_atomically(root: Path, root_fd: int) -> None:
    write(root_fd, "/a/b/c.txt", Blocks([b"hel", b"lo"], [b"!"]))
    f = root / "a" / "b" / "c.txt"
    assert f.read_bytes() == b"hello!"
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "a").stat().st_mode) == 0o755
    inode = f.stat().st_ino
    write(root_fd, "/a/b/c.txt", Blocks())
    assert f.read_bytes() == b""
    assert f.stat().st_ino != inode  # a new file renamed over the old one
    assert os.listdir(root / "a" / "b") == ["c.txt"]


def test_write_file_follows_a_final_symlink_inside_the_root(
    root: Path, root_fd: int, canary: Path
) -> None:
    os.symlink("/etc/real", root / "etc" / "alias")
    write(root_fd, "/etc/alias", Blocks([b"via link"]))
    assert (root / "etc" / "real").read_bytes() == b"via link"
    assert os.readlink(root / "etc" / "alias") == "/etc/real"
    os.symlink(str(canary / "hostname"), root / "host")  # a host path, resolved inside
    write(root_fd, "/host", Blocks([b"evil"]))
    assert (root / str(canary).lstrip("/") / "hostname").read_bytes() == b"evil"
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    with pytest.raises(OSError) as info:
        write(root_fd, "/loop1", Blocks([b"x"]))
    assert info.value.errno == errno.ELOOP


def test_write_file_conflicts_and_failures_leave_nothing(root: Path, root_fd: int) -> None:
    (root / "adir").mkdir()
    with pytest.raises(e.ConflictError):
        write(root_fd, "/adir", Blocks([b"x"]))
    with pytest.raises(e.ConflictError):
        write(root_fd, "/adir/.", Blocks([b"x"]))
    with pytest.raises(e.InvalidRequestError):
        write(root_fd, "/missing/", Blocks([b"x"]))
    with pytest.raises(NotADirectoryError):
        (root / "plain").write_text("x")
        write(root_fd, "/plain/below", Blocks([b"x"]))

    class Gone(Exception):
        pass

    with pytest.raises(Gone):
        write(root_fd, "/etc/partial", Blocks([b"half"], error=Gone()))
    assert os.listdir(root / "etc") == []


def test_open_source_kinds(root: Path, root_fd: int) -> None:
    (root / "etc" / "f").write_bytes(b"12345")
    os.symlink("/etc/f", root / "flink")
    src = files.open_source(root_fd, "/flink", None)
    assert (src.kind, src.size) == ("file", 5)
    src.close()
    src.close()  # idempotent
    src = files.open_source(root_fd, "/etc", None)
    assert (src.kind, src.size) == ("dir", None)
    src.close()
    os.mkfifo(root / "fifo")
    with pytest.raises(e.InvalidRequestError, match="neither"):
        files.open_source(root_fd, "/fifo", None)
    with pytest.raises(FileNotFoundError):
        files.open_source(root_fd, "/missing", None)


@pytest.mark.parametrize(
    ("code", "writing", "kind"),
    [
        (errno.ENOENT, False, e.FileNotFoundInContainerError),
        (errno.ENOTDIR, False, e.FileNotFoundInContainerError),
        (errno.ENOENT, True, e.InvalidRequestError),
        (errno.ENOTDIR, True, e.ConflictError),
        (errno.EISDIR, True, e.ConflictError),
        (errno.ENOSPC, True, e.DiskLimitExceededError),
        (errno.EDQUOT, True, e.DiskLimitExceededError),
        (errno.ELOOP, False, e.InvalidRequestError),
        (errno.EXDEV, True, e.InvalidRequestError),
        (errno.EROFS, True, e.InvalidRequestError),
        (errno.EIO, True, e.KernelError),
    ],
)
def test_file_errors(code: int, writing: bool, kind: type[e.GardenError]) -> None:
    err = files.file_error(OSError(code, os.strerror(code)), "/p", writing=writing, handle="h")
    assert type(err) is kind
    assert err.handle == "h"
    assert "/p" in err.message


# -- threadio ----------------------------------------------------------------------------------


async def chunks(*parts: bytes, error: Exception | None = None) -> AsyncIterator[bytes]:
    for p in parts:
        await trio.lowlevel.checkpoint()
        yield p
    if error is not None:
        raise error


async def test_feed_and_body_reader_in_a_thread() -> None:
    data = [os.urandom(70_000) for _ in range(40)]  # more than a block
    send, receive = trio.open_memory_channel[list[bytes]](2)
    reader = BodyReader(receive)

    def consume() -> tuple[bytes, bytes, bool]:
        head = reader.read_exact(100)
        rest = b"".join(bytes(p) for p in reader.pieces(sum(map(len, data)) - 100))
        return head, rest, reader.at_end()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed, chunks(*data), send, reader)
        head, rest, at_end = await trio.to_thread.run_sync(consume)
    assert head + rest == b"".join(data)
    assert at_end


async def test_a_failing_body_fails_the_reading_thread() -> None:
    class Gone(Exception):
        pass

    send, receive = trio.open_memory_channel[list[bytes]](2)
    reader = BodyReader(receive)

    def consume() -> None:
        while reader.next_block() is not None:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed, chunks(b"x" * 10, error=Gone()), send, reader)
        with pytest.raises(Gone):
            await trio.to_thread.run_sync(consume)


async def test_a_short_body_is_eof_for_exact_reads() -> None:
    send, receive = trio.open_memory_channel[list[bytes]](1)
    await send.send([b"abc"])
    send.close()
    reader = BodyReader(receive)
    with pytest.raises(EOFError):
        await trio.to_thread.run_sync(reader.read_exact, 5)


async def test_produced_blocks_in_order_and_errors_after_them() -> None:
    def produce(writer: BlockWriter) -> None:
        for i in range(5):
            writer.write(bytes([i]) * (BLOCK // 2))
        writer.write(b"z" * (BLOCK + 1))  # a big write goes out as it is

    got = b""
    async with produced_blocks(produce) as blocks:
        async for block in blocks:
            assert len(block) <= BLOCK + 1
            got += block
    assert got == b"".join(bytes([i]) * (BLOCK // 2) for i in range(5)) + b"z" * (BLOCK + 1)

    def failing(writer: BlockWriter) -> None:
        writer.write(b"a" * BLOCK)
        raise OSError(errno.EIO, "disk on fire")

    received = []
    with pytest.raises(BaseExceptionGroup) as info:
        async with produced_blocks(failing) as blocks:
            async for block in blocks:
                received.append(block)
    assert info.group_contains(OSError)
    assert received == [b"a" * BLOCK]


async def test_a_consumer_leaving_early_stops_the_producer() -> None:
    stopped = threading.Event()

    def endless(writer: BlockWriter) -> None:
        try:
            while True:
                writer.write(b"x" * BLOCK)
        finally:
            stopped.set()

    async with produced_blocks(endless) as blocks:
        async for _ in blocks:
            break
    assert stopped.is_set()
