"""Passthrough output on real processes: the raw files, the order index (live, across a
"restart" of the index, and for output written while no index ran), the cap with its freed
front, and a slow reader that holds the front instead of losing it."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from garden.linux import monitor, output
from garden.linux.passthrough import OrderIndex
from garden.linux.plan import SpawnedProcess
from tests.integration.process.conftest import Container
from tests.integration.process.helpers import passthrough

pytestmark = pytest.mark.root

MiB = 1 << 20


async def read_all(
    watcher: output.LogWatcher, index: OrderIndex, facts: SpawnedProcess, replay: int | None = None
) -> list[tuple[str, bytes]]:
    """(source, data) runs in order, consecutive chunks of one stream merged."""
    runs: list[tuple[str, bytes]] = []
    follow = watcher.follow_passthrough(index, facts.exit_path, replay_bytes=replay)
    async with contextlib.aclosing(follow) as chunks:
        async for chunk in chunks:
            if runs and runs[-1][0] == chunk.source:
                runs[-1] = (chunk.source, runs[-1][1] + chunk.data)
            else:
                runs.append((chunk.source, chunk.data))
    return runs


def joined(runs: list[tuple[str, bytes]], source: str) -> bytes:
    return b"".join(data for s, data in runs if s == source)


async def test_exact_bytes_and_streams_apart(
    container: Container, watcher: output.LogWatcher, garden_monitor: str | None
) -> None:
    tmp = container.rootfs / "tmp"
    binary = os.urandom(5 * MiB)
    text = b"".join(b"line %d \xc3\xa9\r\x00\n" % i for i in range(400_000))[: 5 * MiB]
    (tmp / "bin").write_bytes(binary)
    (tmp / "text").write_bytes(text)
    try:
        script = "cat /tmp/bin; cat /tmp/text >&2; exit 7"
        async with passthrough(container, watcher, script, garden_monitor=garden_monitor) as (
            facts,
            indexed,
        ):
            assert indexed.index is not None
            runs = await read_all(watcher, indexed.index, facts)
            assert await monitor.wait_exit(facts) == 7
            assert not (Path(facts.process_dir) / "log").exists()
    finally:
        (tmp / "bin").unlink()
        (tmp / "text").unlink()
    assert joined(runs, "stdout") == binary
    assert joined(runs, "stderr") == text
    assert [s for s, _ in runs] == ["stdout", "stderr"]


async def _until(condition: Any) -> None:
    """Wait (bounded) for a file-system condition that no event of ours announces."""
    with trio.fail_after(20):
        while not condition():
            await trio.sleep(0.01)


async def test_order_index_live_and_across_a_restart(
    container: Container, watcher: output.LogWatcher, garden_monitor: str | None
) -> None:
    """Each line is written once the previous one has reached a reader, so the true order is
    known; while the index is down (a server crash) the gap is "the stream being written,
    then the other", and the index loaded again keeps everything it had recorded."""
    gates = container.rootfs / "tmp" / uuid.uuid4().hex
    gates.mkdir()
    steps = ["o1", "e1", "o2", "e2", "o3", "e3", "o4", "e4"]
    script = "; ".join(
        f"while [ ! -e /tmp/{gates.name}/{s} ]; do usleep 2000; done; "
        + (f"echo {s}" if s[0] == "o" else f"echo {s} >&2")
        for s in steps
    )
    try:
        async with passthrough(container, watcher, script, garden_monitor=garden_monitor) as (
            facts,
            indexed,
        ):
            pdir = Path(facts.process_dir)
            assert indexed.index is not None
            follow = watcher.follow_passthrough(indexed.index, facts.exit_path)
            async with contextlib.aclosing(follow) as chunks:
                for step in steps[:4]:  # the server runs: every switch is seen
                    (gates / step).touch()
                    chunk = await anext(chunks)
                    assert chunk.data == f"{step}\n".encode()
            indexed.stop()  # the server is down: o3, e3 are written unindexed
            for step in ("o3", "e3"):
                (gates / step).touch()
            await _until(lambda: (pdir / "stderr").stat().st_size == 9)
            indexed.start(pdir)  # the server is back
            assert indexed.index is not None
            live = watcher.follow_passthrough(indexed.index, facts.exit_path, replay_bytes=0)
            async with contextlib.aclosing(live) as chunks:
                got = []
                for step in ("o4", "e4"):
                    (gates / step).touch()
                    got.append(await anext(chunks))
            assert await monitor.wait_exit(facts) == 0
            index = indexed.index
            index.finish()
            runs = await read_all(watcher, index, facts)
            indexed.stop()
            again = OrderIndex(pdir)  # a restart after the exit reads the same from the file
            try:
                assert await read_all(watcher, again, facts) == runs
            finally:
                again.close()
    finally:
        for gate in gates.iterdir():
            gate.unlink()
        gates.rmdir()
    # e2 was the open segment at the crash, so the gap starts with stderr: e2 e3, then o3.
    assert runs == [
        ("stdout", b"o1\n"),
        ("stderr", b"e1\n"),
        ("stdout", b"o2\n"),
        ("stderr", b"e2\ne3\n"),
        ("stdout", b"o3\no4\n"),
        ("stderr", b"e4\n"),
    ]
    assert [c.data for c in got] == [b"o4\n", b"e4\n"]  # live again once the index is back


def _expected_seq(n: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(1, n + 1))


async def test_cap_frees_the_front_and_attach_replays_the_tail(
    container: Container, watcher: output.LogWatcher, garden_monitor: str | None
) -> None:
    cap = 1 * MiB
    lines = 3_000_000  # ~21 MB of stdout
    full = _expected_seq(lines)
    script = f"seq 1 {lines}; echo end >&2"
    # Not pinned: no reader comes, the index frees the front while the process writes.
    async with passthrough(
        container, watcher, script, cap=cap, pin=False, garden_monitor=garden_monitor
    ) as (facts, indexed):
        assert indexed.index is not None
        assert await monitor.wait_exit(facts) == 0
        index = indexed.index
        index.finish()
        stdout = Path(facts.process_dir) / "stdout"
        st = stdout.stat()
        assert st.st_size == len(full)  # the size stays, the front's blocks are gone
        assert st.st_blocks * 512 <= cap + 10 * MiB, st.st_blocks * 512
        assert index.freed["stdout"] >= len(full) - cap - 9 * MiB
        tail = await read_all(watcher, index, facts, replay=cap)
        assert tail == [("stdout", full[-(cap - 4) :]), ("stderr", b"end\n")]
        # From the start: what is kept, never the zeros of the freed front.
        whole = await read_all(watcher, index, facts)
        assert full.endswith(joined(whole, "stdout"))
        assert len(joined(whole, "stdout")) >= cap


async def test_a_slow_reader_holds_the_front(
    container: Container, watcher: output.LogWatcher, garden_monitor: str | None
) -> None:
    cap = 1 * MiB
    lines = 3_000_000
    full = _expected_seq(lines)
    script = f"seq 1 {lines}"
    async with passthrough(container, watcher, script, cap=cap, garden_monitor=garden_monitor) as (
        facts,
        indexed,
    ):
        assert indexed.index is not None
        index = indexed.index
        follow = watcher.follow_passthrough(index, facts.exit_path, replay_bytes=None)
        async with contextlib.aclosing(follow) as chunks:
            first = await anext(chunks)  # then it reads nothing while the process writes on
            assert await monitor.wait_exit(facts) == 0
            stdout = Path(facts.process_dir) / "stdout"
            assert stdout.stat().st_blocks * 512 >= len(full) - 64 * 1024
            rest = [chunk.data async for chunk in chunks]
        assert first.data + b"".join(rest) == full
