"""`just load`: start a server (or use `--url`), run N clients for D minutes, sample the server's
RSS and descriptors, then check that every container is gone and nothing leaked. Prints a report
(and `--json` writes it), exits 1 when a bar is missed:
- no failure (an error the client did not cause), and every bad request got its 4xx;
- RSS and open descriptors flat: slope after the warm-up under `--max-rss-slope` MiB/min
  (checked for runs of 5 minutes or more), idle descriptors at the end within a few of those
  at the start;
- nothing of the server's left in the kernel or its state dir (`garden.linux.leftovers`).
Traffic goes only to the server on 127.0.0.1 (and containers' own subnets inside it)."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path

import httpx
import msgspec
import trio

from bench.load.client import REQUEST_TIMEOUT, LoadClient
from bench.load.sampler import Sample, Sampler, fd_diff, fd_kinds
from bench.load.tally import OpStats, Tally
from bench.ours import GardenServer
from garden.events.journal import RECENT
from garden.linux.leftovers import leftovers

# GardenServer.sweep imports it lazily: load it now, not after a 10-minute run.
import garden.main  # noqa: F401  # isort: skip

WORK_ROOT = Path("/var/tmp/garden-load")  # traversable by containers' mapped root (0711)
IDLE_FD_SLACK = 8  # descriptors the idle server may hold at the end beyond those at the start
IDLE_SETTLE = 15.0  # seconds the idle descriptor count gets to come down at the end
# RSS is read again this long after the last answer: the allocator gives memory back on its own
# clock (glibc at its next trim, every 30 s; jemalloc as its dirty pages decay, ~10 s)
IDLE_RSS_AFTER = 40.0
DRAIN_TIMEOUT = 300.0  # clients finish their iteration within this after the deadline
JOURNAL_EVERY = 10.0  # seconds between two looks at the server's event count (/metrics)
SLOPE_MIN_AFTER_WARMUP = 120.0  # seconds of samples after the warm-up for a slope to judge
_RECORDS = re.compile(rb"^garden_event_log_records_total (\d+)", re.MULTILINE)


class Options(msgspec.Struct, frozen=True, kw_only=True):
    clients: int = 20
    seconds: float = 600.0
    url: str = ""  # empty: start a server of our own
    pid: int = 0  # with --url: the server's pid, for the RSS/fd samples
    sample_every: float = 2.0
    warmup: float = 0.2  # fraction of the run left out of the slopes
    max_rss_slope: float = 1.0  # MiB per minute
    slope_min_seconds: float = 300.0  # shorter runs report the slope but do not judge it
    seed: int = 0
    keep: bool = False  # keep the work dir (state dir, server log)
    server_args: tuple[str, ...] = ()


class Leaks(msgspec.Struct, frozen=True, kw_only=True):
    checked: bool
    found: list[str]
    containers_left: list[str]


class Report(msgspec.Struct, kw_only=True):
    clients: int
    seconds: float
    iterations: int
    ops: int
    failures: dict[str, int]
    failure_examples: list[str]
    client_errors: dict[str, int]
    latencies: dict[str, OpStats]
    rss_mib_start: float = 0.0
    rss_mib_max: float = 0.0
    rss_mib_end: float = 0.0
    rss_mib_idle_later: float = 0.0  # IDLE_RSS_AFTER seconds after the last answer
    rss_slope_mib_per_min: float = 0.0
    fds_idle_start: int = 0
    fds_max: int = 0
    fds_idle_end: int = 0
    fd_slope_per_min: float = 0.0
    fds_added: list[str] = msgspec.field(default_factory=list)  # idle end beyond idle start
    # seconds into the run when the server had recorded RECENT events since the start (its
    # in-memory window of recent events full: a bounded ~3 MiB that the slope must not count);
    # -1: not within the run
    window_full_s: float = -1.0
    slope_from_s: float = 0.0  # the end of the warm-up the slopes are measured after
    server_log_errors: int = 0
    leaks: Leaks = msgspec.field(
        default_factory=lambda: Leaks(checked=False, found=[], containers_left=[])
    )
    samples: list[Sample] = msgspec.field(default_factory=list)
    problems: list[str] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def slope_judged(report: Report) -> bool:
    """A slope counts once the event window was full and enough of the run came after."""
    return (
        report.window_full_s >= 0 and report.seconds - report.slope_from_s >= SLOPE_MIN_AFTER_WARMUP
    )


def judge(report: Report, options: Options) -> list[str]:
    problems: list[str] = []
    if report.failures:
        problems.append(f"{sum(report.failures.values())} failures the clients did not cause")
    if report.iterations == 0:
        problems.append("no iteration completed")
    if report.leaks.containers_left:
        problems.append(f"containers left: {report.leaks.containers_left}")
    if report.leaks.found:
        problems.append(f"leaked: {report.leaks.found}")
    if report.fds_idle_end > report.fds_idle_start + IDLE_FD_SLACK:
        problems.append(
            f"idle descriptors grew from {report.fds_idle_start} to {report.fds_idle_end}"
        )
    slope = report.rss_slope_mib_per_min
    judged = slope_judged(report)
    if report.seconds >= options.slope_min_seconds and judged and slope > options.max_rss_slope:
        problems.append(
            f"RSS grows {slope:.2f} MiB/min after the warm-up (bar: {options.max_rss_slope})"
        )
    if report.server_log_errors:
        problems.append(f"{report.server_log_errors} ERROR lines in the server log")
    return problems


async def _containers(http: httpx.AsyncClient) -> list[str]:
    r = await http.get("/containers")
    r.raise_for_status()
    return [str(h) for h in r.json()["handles"]]


async def drive(options: Options, url: str, pid: int) -> tuple[Report, Sampler | None]:
    """The clients and the sampler against a running server at `url`."""
    tally = Tally()
    sampler = Sampler(pid, options.sample_every) if pid else None
    timeout = httpx.Timeout(REQUEST_TIMEOUT)
    started = time.monotonic()
    deadline = started + options.seconds
    clients: list[LoadClient] = []
    window_full: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as admin:
        before = set(await _containers(admin))
        idle_start = sampler.take() if sampler else None
        kinds_start = fd_kinds(pid) if pid else None
        async with trio.open_nursery() as nursery:
            if sampler is not None:
                nursery.start_soon(sampler.run)
                nursery.start_soon(_watch_window, admin, sampler.t0, window_full)
            with trio.fail_after(options.seconds + DRAIN_TIMEOUT):
                async with trio.open_nursery() as workers:
                    for n in range(options.clients):
                        http = httpx.AsyncClient(base_url=url, timeout=timeout)
                        client = LoadClient(n, http, tally, options.seed)
                        clients.append(client)
                        workers.start_soon(_client_task, client, http, deadline)
            nursery.cancel_scope.cancel()
        elapsed = time.monotonic() - started
        left = sorted(set(await _containers(admin)) - before)
        for handle in left:  # a failed destroy: try once more so the leak check is fair
            await admin.delete(f"/containers/{handle}")
    report = Report(
        clients=options.clients,
        seconds=round(elapsed, 1),
        iterations=tally.iterations,
        ops=tally.ops,
        failures=dict(tally.failures),
        failure_examples=tally.failure_examples,
        client_errors=dict(tally.client_errors),
        latencies=tally.stats(),
        leaks=Leaks(checked=False, found=[], containers_left=left),
    )
    if sampler is not None and idle_start is not None and sampler.samples:
        # Connections and transfers wind down a moment after the last answer: give the
        # idle count a few seconds to settle (nothing to await from outside the server).
        idle_end = sampler.take() or sampler.samples[-1]
        settle = time.monotonic() + IDLE_SETTLE
        while idle_end.fds > idle_start.fds + IDLE_FD_SLACK and time.monotonic() < settle:
            await trio.sleep(0.5)
            idle_end = sampler.take() or idle_end
        report.samples = sampler.samples
        report.rss_mib_start = round(idle_start.rss_kib / 1024, 1)
        report.rss_mib_max = round(max(s.rss_kib for s in sampler.samples) / 1024, 1)
        report.rss_mib_end = round(idle_end.rss_kib / 1024, 1)
        await trio.sleep(max(0.0, started + elapsed + IDLE_RSS_AFTER - time.monotonic()))
        later = sampler.take()
        report.rss_mib_idle_later = round(later.rss_kib / 1024, 1) if later else 0.0
        report.fds_idle_start = idle_start.fds
        report.fds_max = max(s.fds for s in sampler.samples)
        report.fds_idle_end = idle_end.fds
        if kinds_start is not None:
            report.fds_added = fd_diff(kinds_start, fd_kinds(pid))
        busy = [s for s in sampler.samples if s.t <= elapsed - 1]  # without the idle tail
        trimmed = Sampler(pid, options.sample_every)
        trimmed.samples = busy
        full = window_full[0] if window_full else -1.0
        report.window_full_s = round(full, 1)
        report.slope_from_s = round(trimmed.warmup_end(options.warmup, full), 1)
        report.rss_slope_mib_per_min = round(trimmed.rss_slope_mib_per_min(options.warmup, full), 3)
        report.fd_slope_per_min = round(trimmed.fd_slope_per_min(options.warmup, full), 3)
    return report, sampler


async def _records(http: httpx.AsyncClient) -> int | None:
    """The events the server recorded since it started (None if it cannot say)."""
    try:
        r = await http.get("/metrics")
    except httpx.HTTPError:
        return None
    m = _RECORDS.search(r.content) if r.status_code == 200 else None
    return int(m.group(1)) if m else None


async def _watch_window(http: httpx.AsyncClient, started: float, full: list[float]) -> None:
    """Append to `full` the seconds into the run at which the server has recorded RECENT
    events more than at the start (its window of recent events is full from then on)."""
    first = await _records(http)
    if first is None:
        return
    while True:
        await trio.sleep(JOURNAL_EVERY)
        now = await _records(http)
        if now is not None and now - first >= RECENT:
            full.append(time.monotonic() - started)
            return


async def _client_task(client: LoadClient, http: httpx.AsyncClient, deadline: float) -> None:
    async with http:
        await client.loop(lambda: time.monotonic() >= deadline)


def count_log_errors(path: Path) -> int:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if " ERROR " in line or "Traceback" in line)


async def run(options: Options) -> Report:
    """A whole load run; with no `url`, against a server of our own that is stopped and swept
    afterwards."""
    if options.url:
        report, _ = await drive(options, options.url, options.pid)
        report.problems = judge(report, options)
        return report
    WORK_ROOT.mkdir(mode=0o711, exist_ok=True)
    WORK_ROOT.chmod(0o711)
    tag = "l" + secrets.token_hex(3)
    server = GardenServer(
        WORK_ROOT / tag,
        tag,
        extra_args=(
            "--port-pool-start", str(30000 + secrets.randbelow(90) * 100),
            "--port-pool-size", "100", "--no-ip-forward", *options.server_args,
        ),
    )  # fmt: skip
    try:
        await server.start()
        report, _ = await drive(options, server.address, server.pid)
        config = server.config
        found = await trio.to_thread.run_sync(
            lambda: leftovers(
                tag=tag,
                state_dir=server.state_dir,
                network_pool=config.network_pool,
                cgroup_parent=config.cgroup_parent,
            )
        )
        report.leaks = Leaks(
            checked=True, found=found, containers_left=report.leaks.containers_left
        )
        await server.stop()
        report.server_log_errors = count_log_errors(server.log_path)
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()
            try:
                await server.sweep()
            except Exception as exc:  # the report matters more than the tidy-up
                print(f"just load: sweeping the server failed: {exc!r}", file=sys.stderr)
            if not options.keep:
                shutil.rmtree(server.work_dir, ignore_errors=True)
    report.problems = judge(report, options)
    return report


def render(report: Report) -> str:
    lines = [
        f"load: {report.clients} clients for {report.seconds:.0f} s:"
        f" {report.iterations} iterations, {report.ops} operations",
        f"failures (not caused by the client): {sum(report.failures.values())} {report.failures}",
        f"client-caused errors (bad on purpose): {sum(report.client_errors.values())}"
        f" {report.client_errors}",
        "",
        f"{'operation':<16} {'count':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}",
    ]
    for op, s in report.latencies.items():
        lines.append(f"{op:<16} {s.count:>7} {s.p50_ms:>8.1f} {s.p95_ms:>8.1f} {s.max_ms:>8.1f}")
    lines += [
        "",
        f"server RSS MiB: idle start {report.rss_mib_start}, max {report.rss_mib_max}, idle end"
        f" {report.rss_mib_end} ({report.rss_mib_idle_later} {IDLE_RSS_AFTER:.0f} s later);"
        f" slope after warm-up {report.rss_slope_mib_per_min:+.3f} MiB/min"
        f" (from {report.slope_from_s:.0f} s; event window full at "
        + (f"{report.window_full_s:.0f} s" if report.window_full_s >= 0 else "no time")
        + ("" if slope_judged(report) else "; not judged")
        + ")",
        f"server fds: idle start {report.fds_idle_start}, max {report.fds_max}, idle end"
        f" {report.fds_idle_end}; slope after warm-up {report.fd_slope_per_min:+.3f}/min",
        *([f"  idle end beyond start: {', '.join(report.fds_added)}"] if report.fds_added else []),
        f"server log: {report.server_log_errors} ERROR lines",
        "leaks: "
        + (
            ("none" if not report.leaks.found else "; ".join(report.leaks.found))
            if report.leaks.checked
            else "not checked (--url)"
        )
        + (
            f"; containers left {report.leaks.containers_left}"
            if report.leaks.containers_left
            else ""
        ),
    ]
    lines += [f"  e.g. {e}" for e in report.failure_examples[:10]]
    lines.append("verdict: " + ("PASS" if report.ok else "FAIL: " + "; ".join(report.problems)))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Options, str]:
    p = argparse.ArgumentParser(prog="just load", description=__doc__.split("\n")[0])
    p.add_argument("-c", "--clients", type=int, default=20)
    p.add_argument("-m", "--minutes", type=float, default=10.0)
    p.add_argument("-s", "--seconds", type=float, help="the duration in seconds (wins over -m)")
    p.add_argument("--url", default="", help="an already running server (no leak check)")
    p.add_argument("--pid", type=int, default=0, help="with --url: its pid, to sample RSS/fds")
    p.add_argument("--sample-every", type=float, default=2.0)
    p.add_argument("--max-rss-slope", type=float, default=1.0, help="MiB per minute")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the state dir and server log")
    p.add_argument("--json", default="", help="also write the report (with samples) here")
    p.add_argument("--server-arg", action="append", default=[], help="extra flag for the server")
    a = p.parse_args(argv)
    if a.clients < 1 or a.clients > 200:
        p.error("--clients: 1-200")
    seconds = a.seconds if a.seconds is not None else a.minutes * 60
    if not 1 <= seconds <= 24 * 3600:
        p.error("the duration must be 1 s to 24 h")
    options = Options(
        clients=a.clients, seconds=seconds, url=a.url, pid=a.pid, sample_every=a.sample_every,
        max_rss_slope=a.max_rss_slope, seed=a.seed, keep=a.keep,
        server_args=tuple(a.server_arg),
    )  # fmt: skip
    return options, a.json


def main(argv: list[str] | None = None) -> int:
    options, json_path = parse_args(argv)
    if not options.url and os.geteuid() != 0:
        print("just load: starting a server needs root (or give --url)", file=sys.stderr)
        return 2
    report = trio.run(run, options)
    print(render(report))
    if json_path:
        Path(json_path).write_bytes(msgspec.json.format(msgspec.json.encode(report)))
    return 0 if report.ok else 1
