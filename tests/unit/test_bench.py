"""The benchmark harness's own logic (no root, no engines): summaries, interleaving, the HTTP
client's body framing, the results table and targets, and the synthetic event log."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from bench import http as bench_http
from bench import stats, targets
from bench.docker import _count_stdout
from bench.http import Connection
from bench.restart import phases, synthesize
from bench.results import Cell, Results, Row, markdown, markdown_table
from bench.stats import Parts, interleave, rotation, summarise
from garden.events.log import EventLog
from garden.events.state import replay


def test_summary_median_p90_min_max() -> None:
    s = summarise([5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 7.0, 8.0, 9.0])
    assert (s.n, s.median, s.p90, s.min, s.max) == (10, 5.5, 9.0, 1.0, 10.0)
    assert summarise([2.0]).p90 == 2.0
    with pytest.raises(ValueError):
        summarise([])


def test_rotation_puts_each_engine_first_in_turn() -> None:
    names = ["a", "b", "c"]
    assert [rotation(names, i)[0] for i in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert sorted(rotation(names, 2)) == names


async def test_interleave_drops_warmup_and_a_failing_engine() -> None:
    order: list[str] = []
    count = {"ok": 0}

    async def ok() -> Parts:
        await trio.lowlevel.checkpoint()
        order.append("ok")
        count["ok"] += 1
        return {"total": float(count["ok"])}

    async def broken() -> Parts:
        await trio.lowlevel.checkpoint()
        order.append("broken")
        raise RuntimeError("no")

    samples, failed = await interleave({"ok": ok, "broken": broken}, rounds=3, warmup=1)
    assert [s["total"] for s in samples["ok"]] == [2.0, 3.0, 4.0]
    assert samples["broken"] == []
    assert failed == {"broken": "RuntimeError: no"}
    assert order.count("broken") == 1


async def _serve_bytes(data: bytes) -> Connection:
    """A connection whose server side answers any request with `data`."""
    client, server = trio.testing.memory_stream_pair()
    await server.send_all(data)
    await server.send_eof()
    return Connection(client, "test")


async def test_http_chunked_body_and_ndjson_lines() -> None:
    body = b'{"a":1}\n{"b":' + b"2}\n" + b'{"c":3}'
    chunked = (
        b"5\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % len(body[5:]) + body[5:] + b"\r\n0\r\n\r\n"
    )
    conn = await _serve_bytes(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"HTTP/1.1 204 No\r\n\r\n"
    )
    response = await conn.request("POST", "/x", b"{}")
    assert response.status == 200
    assert [line async for line in response.lines()] == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert conn.reusable
    status, rest = await conn.call("DELETE", "/y")
    assert (status, rest) == (204, b"")


async def test_http_lines_exact_across_chunks_and_a_growing_buffer() -> None:
    # Lines split across HTTP chunks anywhere, one longer than the receive buffer (it grows),
    # several in one chunk; and the views handed out read right while they are current.
    big = bytes(range(256)).replace(b"\n", b"") * (bench_http.BUFFER_SIZE // 200)
    body = b"a\n" + big + b"\nbb\nccc\n" + b"d" * 5000 + b"\n" + b"tail"
    cuts = [0, 1, 3, 10, len(big) // 2, len(big) + 3, len(big) + 12, len(body)]
    chunked = b"".join(
        b"%x\r\n" % (b - a) + body[a:b] + b"\r\n" for a, b in itertools.pairwise(cuts)
    )
    conn = await _serve_bytes(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
    )
    response = await conn.request("GET", "/x")
    got = [bytes(line) async for line in response.lines()]
    assert got == body.split(b"\n")
    assert conn.reusable


async def test_http_lines_of_a_content_length_body() -> None:
    body = b"one\ntwo\n" + b"x" * 3_000_000 + b"\nlast"
    conn = await _serve_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    response = await conn.request("GET", "/x")
    assert [bytes(line) async for line in response.lines()] == body.split(b"\n")


async def test_http_content_length_and_close() -> None:
    conn = await _serve_bytes(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    )
    assert await conn.call("GET", "/") == (200, b"abc")
    assert not conn.reusable


async def test_docker_stream_counts_only_stdout() -> None:
    frames = b"\x01\0\0\0\0\0\0\x05hello" + b"\x02\0\0\0\0\0\0\x03err" + b"\x01\0\0\0\0\0\0\x01!"

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(frames), 3):  # frames split anywhere, headers too
            await trio.lowlevel.checkpoint()
            yield frames[i : i + 3]

    assert await _count_stdout(pieces()) == 6


def _row(key: str, ours: float, theirs: dict[str, float], better: str = "lower") -> Row:
    cells = {"garden": Cell(value=ours)} | {k: Cell(value=v) for k, v in theirs.items()}
    return Row(key=key, title=key, unit="ms", better=better, cells=cells)  # type: ignore[arg-type]


def test_table_ratios_and_targets() -> None:
    results = Results(started="now")
    results.rows = [
        _row("run_true", 30.0, {"runc": 20.0, "docker": 100.0}),
        _row("stdout", 300.0, {"docker": 200.0}, better="higher"),
        Row(key="create_destroy_net", title="net", unit="ms",
            cells={"garden": Cell(skipped="no networking"), "docker": Cell(value=200.0)}),
    ]  # fmt: skip
    table = markdown_table(results)
    assert "| run_true | ms | 30.0 | 20.0 | 100 | 1.50x | 0.30x |" in table
    assert "| stdout | ms ↑ | 300 | - | 200 | - | 1.50x |" in table
    checks = {t.what: t for t in targets.check(results, 50)}
    assert checks["run `true` ≤ the runtime's own exec (runc) + 5 ms"].met is False
    assert checks["run `true` ≤ 0.4x Docker exec"].met is True
    assert checks["256 MiB stdout ≥ 3x Docker exec"].met is False
    net = checks["create + destroy with network ≤ 0.25x Docker"]
    assert net.met is None and "no networking" in net.detail


def test_run_target_compares_with_the_runtime_our_server_uses() -> None:
    results = Results(started="now", machine={"garden runtime": "crun"})
    results.rows = [_row("run_true", 30.0, {"runc": 28.0, "crun": 10.0})]
    checks = {t.what: t for t in targets.check(results, 50)}
    target = checks["run `true` ≤ the runtime's own exec (crun) + 5 ms"]
    assert target.met is False and "+20.0 ms" in target.detail
    assert "## Targets" in markdown(results)


def test_synthetic_log_has_the_asked_shape(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    synthesize(path, events=3000, containers=20)
    log = EventLog.open(path)
    try:
        assert log.last_seq == 3000
        state = replay(log.records())
    finally:
        log.close()
    assert len(state.containers) == 20
    assert {c.phase for c in state.containers.values()} == {"active"}
    assert all(len(c.processes) == 10 for c in state.containers.values())


def test_phases_from_the_server_log() -> None:
    log = (
        "2026-11-29 17:00:01,500 INFO garden.main replayed records=3 containers=0\n"
        "2026-11-29 17:00:02,250 INFO garden.main serving binds=['x']\n"
    )
    from datetime import datetime

    t0 = datetime(2026, 11, 29, 17, 0, 1).timestamp()
    got = phases(log, t0)
    assert got == pytest.approx({"replayed": 0.5, "serving": 1.25})


async def test_files_hook_turns_files_bench_results_into_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys
    import types

    from bench.cases import Context, Options
    from bench.run import files_rows

    calls: list[dict[str, object]] = []
    fake = types.ModuleType("bench.files_bench")

    def run(**kwargs: object) -> dict[str, object]:
        calls.append(kwargs)
        return {"upload_mbps": 400, "download_mbps": 900, "upload_server_cpu_s_per_gib": 1.5}

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.files_bench", fake)

    class Ours:
        class server:
            address, pid = "http://127.0.0.1:1", 42

        async def create(self, *, network: bool) -> tuple[str, float]:
            await trio.lowlevel.checkpoint()
            return "h", 0.0

        async def destroy(self, id: str) -> float:
            await trio.lowlevel.checkpoint()
            return 0.0

    ctx = Context(options=Options(), work_dir=Path("/nonexistent"), engines={})
    rows = await files_rows(ctx, Ours())  # type: ignore[arg-type]
    assert calls == [
        {"size_mib": 1024, "url": "http://127.0.0.1:1", "handle": "h", "server_pid": 42}
    ]
    assert [(r.key, r.cells["garden"].value) for r in rows] == [
        ("stream_in", 400.0),
        ("stream_out", 900.0),
    ]
    assert rows[0].cells["garden"].extra == {"server CPU s/GiB": 1.5}


def test_a_failed_group_names_its_first_error() -> None:
    """200 concurrent runs failing said only "(200 sub-exceptions)" in a table once."""
    group = ExceptionGroup("runs", [RuntimeError("run ['sleep', '1']: 503 b'no fds'"), OSError()])
    text = stats.describe(group)
    assert text.startswith("ExceptionGroup: runs (2 sub-exceptions); the first: RuntimeError")
    assert "503 b'no fds'" in text
    assert stats.describe(ValueError("x")) == "ValueError: x"


async def test_pool_does_not_reuse_a_connection_idle_past_the_server_keep_alive(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    """Regression: the 200-process case sent its next round into connections the server had
    closed after 75 s idle while Podman's rounds ran ("connection closed in the middle of a
    line")."""
    opened: list[Connection] = []

    async def open_one(address: str) -> Connection:
        conn = await _serve_bytes(b"HTTP/1.1 204 No\r\n\r\n" * 2)
        opened.append(conn)
        return conn

    monkeypatch.setattr(Connection, "open", staticmethod(open_one))
    pool = bench_http.Pool("http://x")
    await pool.call("GET", "/a")
    await pool.call("GET", "/b")  # at once: the same connection
    assert len(opened) == 1
    await trio.sleep(bench_http.MAX_IDLE + 1)
    await pool.call("GET", "/c")  # idle too long: a new one
    assert len(opened) == 2
    await pool.aclose()
