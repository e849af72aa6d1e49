"""Restart time of `garden server` (exec to /ping answering) with a long history: a log made
with the real `EventLog` and events, holding `containers` live containers and `events` records
in all (containers made and destroyed, processes run, properties set). The live containers'
inits are gone (as after a host reboot), so recovery finds and records each of them stopped.

The log is built once per shape and format (keyed by the schema and log sources) under
/var/tmp/garden-bench/cache and copied into a fresh state dir. Its first start replays all of it;
the server writes a snapshot when it stops, and the restarts measured after that restore the
snapshot and replay only the records that follow it, as a server normally restarts.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import time
from datetime import datetime
from pathlib import Path

import trio

from bench.cases import OP_TIMEOUT, Context, engine_cells
from bench.ours import GardenServer
from bench.results import Cell, Row
from bench.stats import Parts, summarise
from garden.api import ContainerSpec
from garden.config import DEFAULT_ROOTFS, DEFAULT_UID_BASE
from garden.events import log as event_log_module
from garden.events import schema
from garden.events.log import EventLog
from garden.events.schema import AnyEvent, Origin
from garden.linux.plan import SpawnedProcess

CACHE_DIR = Path("/var/tmp/garden-bench/cache")
# Paths the synthetic events name; nothing is ever created there.
SYNTHETIC_ROOT = "/var/tmp/garden-bench/synthetic"
SYNTHETIC_TAG = "bsynth"
# Above the kernel's largest pid_max (2^22): no process can have it.
GONE_PID = (1 << 22) + 1
PROCESSES_PER_LIVE = 10
SHAPE_VERSION = 1
BATCH = 10_000


def cache_key(events: int, containers: int) -> str:
    h = hashlib.sha256(f"{SHAPE_VERSION} {events} {containers}".encode())
    for module in (schema, event_log_module):
        assert module.__file__ is not None
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


class _Writer:
    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.batch: list[tuple[AnyEvent, Origin]] = []
        self.count = 0
        self.origin = Origin(request_id="bench", client="127.0.0.1")

    def add(self, event: AnyEvent) -> None:
        self.batch.append((event, self.origin))
        self.count += 1
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            self.log.append(self.batch, now=time.time())
            self.batch = []


def _container(w: _Writer, handle: str) -> str:
    cid = secrets.token_hex(8)
    path = f"{SYNTHETIC_ROOT}/containers/{cid}"
    w.add(
        schema.ContainerCreateStarted(
            handle=handle, container_id=cid, spec=ContainerSpec(properties={"app": handle}),
            rootfs=DEFAULT_ROOTFS, container_path=path, cgroup_path=f"/{SYNTHETIC_TAG}/{cid}",
            uid_base=DEFAULT_UID_BASE, grace_time=0.0, env=["A=1"],
        )
    )  # fmt: skip
    w.add(schema.ContainerCreated(handle=handle, pid=GONE_PID, pid_start_time=1))
    return cid


def _process(w: _Writer, handle: str, cid: str) -> None:
    pid = secrets.token_hex(8)
    facts = SpawnedProcess(
        container_id=cid, process_dir=f"{SYNTHETIC_ROOT}/containers/{cid}/processes/{pid}",
        socket_link=f"/run/garden-trio/{SYNTHETIC_TAG}/{pid}", pid=GONE_PID, pid_start_time=1,
        conmon_pid=GONE_PID, conmon_start_time=1, tty=False, stdin=False,
    )  # fmt: skip
    w.add(schema.ProcessStarted(handle=handle, process_id=pid, facts=facts, args=["echo", "hi"]))
    w.add(schema.ProcessExited(handle=handle, process_id=pid, exit_status=0))


def synthesize(path: Path, events: int, containers: int) -> None:
    """Write a log of exactly `events` records ending with `containers` live containers."""
    log = EventLog.open(path)
    try:
        w = _Writer(log)
        w.add(schema.ServerStarted(version="bench", pid=1))
        live = [(f"live-{i}", _container(w, f"live-{i}")) for i in range(containers)]
        per_churn = 6
        fixed = w.count + containers * PROCESSES_PER_LIVE * 2
        churn = max(0, (events - fixed) // per_churn)
        step = max(1, churn // max(1, containers * PROCESSES_PER_LIVE))
        processes = 0
        for i in range(churn):
            handle = f"gone-{i}"
            cid = _container(w, handle)
            _process(w, handle, cid)
            w.add(schema.ContainerDestroyStarted(handle=handle, reason="request"))
            w.add(schema.ContainerDestroyed(handle=handle))
            if live and i % step == 0 and processes < containers * PROCESSES_PER_LIVE:
                h, c = live[processes % containers]
                _process(w, h, c)
                processes += 1
        while live and w.count + 2 <= events and processes < containers * PROCESSES_PER_LIVE:
            h, c = live[processes % containers]
            _process(w, h, c)
            processes += 1
        n = 0
        while w.count < events:
            h = live[n % len(live)][0] if live else "none"
            w.add(schema.PropertySet(handle=h, key="n", value=str(n)))
            n += 1
        w.flush()
    finally:
        log.close()


def cached_log(events: int, containers: int) -> Path:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"events-{events}-{containers}-{cache_key(events, containers)}.log"
    if not path.exists():
        for old in CACHE_DIR.glob(f"events-{events}-{containers}-*.log"):
            old.unlink()
        tmp = path.with_suffix(f".tmp{secrets.token_hex(4)}")
        try:
            synthesize(tmp, events, containers)
            tmp.rename(path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO garden\.main (replayed|serving)")


def phases(log_text: str, exec_wall: float) -> dict[str, float]:
    """Seconds from exec to the server's "replayed" and "serving" log lines (ms resolution)."""
    out: dict[str, float] = {}
    for line in log_text.splitlines():
        m = _STAMP.match(line)
        if m:
            at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out[m.group(2)] = at - exec_wall
    return out


async def _start_once(server: GardenServer) -> Parts:
    exec_wall = time.time()
    seconds = await server.start()
    found = phases(server.log_tail(1 << 20), exec_wall)
    parts = {"total": seconds}
    if "replayed" in found and "serving" in found:
        parts["exec + imports + replay"] = found["replayed"]
        parts["recovery + HTTP start"] = found["serving"] - found["replayed"]
        parts["until /ping answers"] = seconds - found["serving"]
    return parts


def _cell(samples: list[Parts]) -> Cell:
    names = sorted({k for s in samples for k in s} - {"total"})
    return Cell(
        summary=summarise([s["total"] for s in samples]),
        parts={n: summarise([s[n] for s in samples if n in s]) for n in names},
    )


async def measure(
    work_dir: Path, tag: str, log: Path | None, rounds: int
) -> tuple[Cell, Cell | None]:
    """Restarts of a server whose state dir holds `log` (None: nothing). The first start is on
    the log alone; the server writes a snapshot when it stops, and the `rounds` starts after it
    restore that snapshot and replay only what came after, as a server normally restarts.
    Without a log every round starts from an empty state dir. (first start, later starts)"""
    if log is None:
        samples = []
        for i in range(rounds):
            server = GardenServer(work_dir / f"r{i}", tag)
            try:
                server.state_dir.mkdir(parents=True, mode=0o711)
                samples.append(await _start_once(server))
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(OP_TIMEOUT):
                    await server.stop()
                    await server.sweep()
                shutil.rmtree(server.work_dir, ignore_errors=True)
        return _cell(samples), None
    server = GardenServer(work_dir / "r", tag)
    try:
        server.state_dir.mkdir(parents=True, mode=0o711)
        await trio.to_thread.run_sync(shutil.copyfile, log, server.state_dir / "events.log")
        first = await _start_once(server)
        await server.stop()
        later = []
        for _ in range(rounds):
            later.append(await _start_once(server))
            await server.stop()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(OP_TIMEOUT):
            await server.stop()
            await server.sweep()
        shutil.rmtree(server.work_dir, ignore_errors=True)
    return _cell([first]), _cell(later)


async def restart_rows(ctx: Context, tag: str) -> list[Row]:
    o = ctx.options
    rounds = o.restart_rounds
    started = time.perf_counter()
    log = await trio.to_thread.run_sync(cached_log, o.restart_events, o.restart_containers)
    built = time.perf_counter() - started
    empty, _ = await measure(ctx.work_dir / "restart-empty", tag, None, rounds)
    first, later = await measure(ctx.work_dir / "restart-full", tag, log, rounds)
    assert later is not None
    first.extra["log MiB"] = log.stat().st_size / (1 << 20)
    first.extra["log build s (0 = cached)"] = built if built > 1 else 0.0
    what = f"{o.restart_containers:,} containers + {o.restart_events:,} events"
    return [
        Row(key="restart_empty", title="restart, empty log → /ping", unit="s",
            cells=engine_cells(ctx, {"garden": empty}, "no server to restart")),
        Row(key="restart_log_first", title=f"first start on a log of {what}, no snapshot → /ping",
            unit="s", cells=engine_cells(ctx, {"garden": first}, "no server to restart"),
            note="the live containers' inits are gone (as after a reboot): recovery records each "
            "stopped"),
        Row(key="restart_log", title=f"restart, {what} (snapshot at stop) → /ping", unit="s",
            cells=engine_cells(ctx, {"garden": later}, "no server to restart"),
            note="the server wrote a snapshot when it stopped; the start replays what follows it"),
    ]  # fmt: skip
