"""output: the k8s-file log parser, replay offsets and live following with inotify."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from garden.linux import output
from garden.linux.output import Chunk

TS = b"2026-11-29T16:36:21.534465311+00:00"


def k8s_lines(stream: str, data: bytes, write_size: int = 8192) -> bytes:
    """What conmon writes for `data` read in `write_size` pieces: one line per newline-ended
    run (F) and one for a piece's unterminated tail (P)."""
    out = []
    for i in range(0, len(data), write_size):
        piece = data[i : i + write_size]
        *full, tail = piece.split(b"\n")
        out += [TS + b" " + stream.encode() + b" F " + line + b"\n" for line in full]
        if tail:
            out.append(TS + b" " + stream.encode() + b" P " + tail + b"\n")
    return b"".join(out)


def rebuild(chunks: list[Chunk], source: str | None = None) -> bytes:
    return b"".join(c.data for c in chunks if source is None or c.source == source)


@pytest.mark.parametrize(
    "data",
    [
        b"hello\n",
        b"no newline at end",
        b"\n\n\nempty lines\n\n",
        b"crlf\r\nline\r\n\r",
        b"\x00nul\x00bytes\n\x00",
        "h\u00e9llo \U0001f600\n".encode(),
        b"\xff\xfe invalid utf-8 \xc3\n",
        b"x" * 20000 + b"\n" + b"y" * 9000,
    ],
)
def test_parse_rebuilds_exact_bytes(data: bytes) -> None:
    chunks, used = output.parse(k8s_lines("stdout", data))
    assert rebuild(chunks) == data
    assert used == len(k8s_lines("stdout", data))


def test_parse_random_binary() -> None:
    data = random.Random(1).randbytes(1 << 20)
    chunks, _ = output.parse(k8s_lines("stderr", data))
    assert rebuild(chunks, "stderr") == data
    assert {c.source for c in chunks} == {"stderr"}


def test_parse_keeps_order_and_merges_runs() -> None:
    log = k8s_lines("stdout", b"a\nb\n") + k8s_lines("stderr", b"E\n") + k8s_lines("stdout", b"c")
    chunks, used = output.parse(log)
    assert [(c.source, c.data) for c in chunks] == [
        ("stdout", b"a\nb\n"),
        ("stderr", b"E\n"),
        ("stdout", b"c"),
    ]
    assert chunks[-1].offset == used == len(log)


def test_parse_leaves_a_partial_line() -> None:
    log = k8s_lines("stdout", b"one\ntwo\n")
    chunks, used = output.parse(log[:-3], base_offset=100)
    assert rebuild(chunks) == b"one\n"
    assert chunks[0].offset == 100 + used
    rest, _ = output.parse(log[used:], base_offset=100 + used)
    assert rebuild(rest) == b"two\n"


def test_parse_skips_malformed_lines() -> None:
    chunks, _ = output.parse(b"garbage\n" + TS + b" stdout\n" + k8s_lines("stdout", b"ok\n"))
    assert rebuild(chunks) == b"ok\n"


def test_read_chunks_resumes_at_any_chunk_offset(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(3 << 20)
    log = tmp_path / "log"
    log.write_bytes(k8s_lines("stdout", data))
    chunks = list(output.read_chunks(log))
    assert rebuild(chunks) == data
    middle = chunks[len(chunks) // 2]
    before = b"".join(c.data for c in chunks[: len(chunks) // 2 + 1])
    assert before + rebuild(list(output.read_chunks(log, middle.offset))) == data


@pytest.mark.parametrize("max_bytes", [0, 1, 100, 8191, 8193, 50_000, 10**9])
def test_tail_offset_keeps_at_most_max_bytes(tmp_path: Path, max_bytes: int) -> None:
    rng = random.Random(3)
    data = b"".join(rng.randbytes(rng.randrange(1, 300)) + b"\n" for _ in range(3000))
    log = tmp_path / "log"
    log.write_bytes(k8s_lines("stdout", data) + TS + b" stdout P torn-line-no-newl")
    kept = rebuild(list(output.read_chunks(log, output.tail_offset(log, max_bytes))))
    assert len(kept) <= max_bytes
    assert len(kept) >= min(len(data), max_bytes) - 8193
    assert data.endswith(kept)


def test_tail_offset_across_block_boundaries(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(5 << 20)  # > the 1 MiB read blocks
    log = tmp_path / "log"
    log.write_bytes(k8s_lines("stdout", data))
    kept = rebuild(list(output.read_chunks(log, output.tail_offset(log, 3 << 20))))
    assert (3 << 20) - 8193 <= len(kept) <= 3 << 20
    assert data.endswith(kept)
    assert output.tail_offset(log, 10 << 20) == 0


# --- following -------------------------------------------------------------------------------


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def _collect(watcher: output.LogWatcher, d: Path, start: int = 0) -> list[Chunk]:
    out = []
    async with contextlib.aclosing(
        watcher.follow(d / "log", d / "exit" / "c", start_offset=start)
    ) as it:
        async for chunk in it:
            out.append(chunk)
    return out


def _proc_dir(tmp_path: Path) -> Path:
    (tmp_path / "exit").mkdir()
    (tmp_path / "log").touch()
    return tmp_path


async def test_follow_sees_writes_live_and_ends_at_exit(tmp_path: Path) -> None:
    d = _proc_dir(tmp_path)
    got: list[Chunk] = []
    async with output.open_log_watcher() as watcher, trio.open_nursery() as nursery:

        async def consume() -> None:
            follow = watcher.follow(d / "log", d / "exit" / "c")
            async with contextlib.aclosing(follow) as chunks:
                async for chunk in chunks:
                    got.append(chunk)

        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        _append(d / "log", k8s_lines("stdout", b"first\n"))
        with trio.fail_after(5):
            while not got:  # woken by inotify, not by a timer
                await trio.sleep(0.01)
        assert rebuild(got) == b"first\n"
        line = k8s_lines("stderr", b"second")
        _append(d / "log", line[:10])  # a line being written
        await trio.sleep(0.05)
        _append(d / "log", line[10:])
        (d / "exit" / "c.tmp").write_text("0")
        os.rename(d / "exit" / "c.tmp", d / "exit" / "c")
    assert [(c.source, c.data) for c in got] == [("stdout", b"first\n"), ("stderr", b"second")]


async def test_follow_of_a_finished_log_and_from_an_offset(tmp_path: Path) -> None:
    d = _proc_dir(tmp_path)
    _append(d / "log", k8s_lines("stdout", b"a\nb\nc\n", write_size=2))
    (d / "exit" / "c").write_text("3")
    async with output.open_log_watcher() as watcher:
        with trio.fail_after(5):
            whole = await _collect(watcher, d)
            assert rebuild(whole) == b"a\nb\nc\n"
            first_line_end = len(k8s_lines("stdout", b"a\n"))
            assert rebuild(await _collect(watcher, d, first_line_end)) == b"b\nc\n"


async def test_many_followers_share_one_watch(tmp_path: Path) -> None:
    d = _proc_dir(tmp_path)
    results: list[bytes] = []
    async with output.open_log_watcher() as watcher:
        async with trio.open_nursery() as nursery:
            for _ in range(200):  # more than the default 128 inotify instances per user

                async def one() -> None:
                    results.append(rebuild(await _collect(watcher, d)))

                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            _append(d / "log", k8s_lines("stdout", b"x" * 100_000))
            (d / "exit" / "c").write_text("0")
        assert watcher._watches == {}
    assert results == [b"x" * 100_000] * 200


async def test_follow_cancelled_releases_its_watches(tmp_path: Path) -> None:
    d = _proc_dir(tmp_path)
    async with output.open_log_watcher() as watcher:
        with trio.move_on_after(0.1):
            await _collect(watcher, d)
        assert watcher._watches == {}


def test_long_and_short_line_parsers_agree() -> None:
    # Long lines (as conmon writes fast output) take the newline-by-newline parser, short ones
    # the split-based one; both give the same chunks, offsets and used length.
    rng = random.Random(7)
    log = b"".join(
        k8s_lines(rng.choice(["stdout", "stderr"]), rng.randbytes(rng.randrange(1, 30000)))
        for _ in range(40)
    )
    log += log[:500]  # a partial line at the end
    long_first = output.parse(log, 100)
    assert long_first == output._parse_slow(log, 100)
    short = b"".join(k8s_lines(s, b"ab\ncd\n") for s in ["stdout", "stderr", "stdout"])
    assert output.parse(short, 7) == output._parse_slow(short, 7)


async def test_follow_reads_a_line_longer_than_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "_READ_SIZE", 64)
    d = _proc_dir(tmp_path)
    data = bytes(range(256)) * 8
    _append(d / "log", k8s_lines("stdout", data, write_size=1000))
    (d / "exit" / "c").write_text("0")
    async with output.open_log_watcher() as watcher:
        with trio.fail_after(5):
            assert rebuild(await _collect(watcher, d)) == data


async def test_follow_keeps_a_torn_last_line(tmp_path: Path) -> None:
    d = _proc_dir(tmp_path)
    _append(d / "log", k8s_lines("stdout", b"whole\n") + TS + b" stdout P torn")
    (d / "exit" / "c").write_text("0")
    async with output.open_log_watcher() as watcher:
        with trio.fail_after(5):
            assert rebuild(await _collect(watcher, d)) == b"whole\ntorn"
