"""`python -m bench`: start garden-trio and the other engines, run every benchmark interleaved,
print one table of medians and ratios, write it to bench/results/ as JSON and Markdown, and
leave nothing behind (every container destroyed, every resource of the run's tag swept)."""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
import trio

from bench import targets
from bench.cases import Context, Options, create_destroy, engine_cells, exec_rows
from bench.concurrent import concurrent_row
from bench.docker import DockerEngine
from bench.engine import Engine, Unavailable
from bench.fleet import fleet_rows
from bench.ours import GardenServer, OursEngine, garden_version
from bench.podman import PodmanEngine
from bench.restart import restart_rows
from bench.results import Cell, Results, Row, encode, markdown, markdown_table
from bench.rps import rps_row
from bench.runtimes import DirectEngine, open_worker, runtime_binary

BASE_DIR = Path("/var/tmp/garden-bench")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
ALL_ENGINES = ("garden", "runc", "crun", "docker", "podman")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    d = Options()
    p.add_argument("--rounds", type=int, default=d.rounds, help="measured rounds per benchmark")
    p.add_argument("--warmup", type=int, default=d.warmup, help="rounds dropped first")
    p.add_argument("--stdout-mib", type=int, default=d.stdout_mib)
    p.add_argument("--stdout-rounds", type=int, default=d.stdout_rounds)
    p.add_argument("--concurrent", type=int, default=d.concurrent,
                   help="processes started at once in one container")  # fmt: skip
    p.add_argument("--concurrent-rounds", type=int, default=d.concurrent_rounds)
    p.add_argument("--fleet", type=int, default=d.fleet, help="containers created at once")
    p.add_argument("--full", action="store_true", help="the full fleet of 1000 containers")
    p.add_argument("--fleet-clients", type=int, default=d.fleet_clients)
    p.add_argument("--rps-clients", type=int, default=d.rps_clients)
    p.add_argument("--rps-seconds", type=float, default=d.rps_seconds)
    p.add_argument("--restart-events", type=int, default=d.restart_events)
    p.add_argument("--restart-containers", type=int, default=d.restart_containers)
    p.add_argument("--restart-rounds", type=int, default=d.restart_rounds)
    p.add_argument("--quick", action="store_true", help="few rounds, small sizes: a smoke test")
    p.add_argument(
        "--engines", default=",".join(ALL_ENGINES), help="comma-separated subset of " +
        ",".join(ALL_ENGINES),
    )  # fmt: skip
    p.add_argument(
        "--only", default="", help="comma-separated benchmark keys (prefixes): create_destroy, "
        "run_true, run_echo, stdout, concurrent, files, info_rps, fleet, restart",
    )  # fmt: skip
    p.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG",
        help="a flag for our server (repeatable), e.g. --server-arg=--process-output=k8s-file",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where results are written")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) afterwards")
    p.add_argument("--time-limit", type=float, default=3600.0, help="seconds for the whole run")
    p.add_argument(
        "--render", type=Path, metavar="JSON",
        help="check the targets of a results file again and rewrite its Markdown; run nothing",
    )  # fmt: skip
    return p.parse_args(argv)


def render(path: Path) -> int:
    results = msgspec.json.decode(path.read_bytes(), type=Results)
    fleet = results.options.get("fleet", 0)
    results.targets = targets.check(results, fleet if isinstance(fleet, int) else 0)
    path.write_bytes(encode(results))
    path.with_suffix(".md").write_text(markdown(results))
    print(markdown_table(results))
    return 0


def options_from(args: argparse.Namespace) -> Options:
    o = Options(
        rounds=args.rounds, warmup=args.warmup, stdout_mib=args.stdout_mib,
        stdout_rounds=args.stdout_rounds, concurrent=args.concurrent,
        concurrent_rounds=args.concurrent_rounds, fleet=1000 if args.full else args.fleet,
        fleet_clients=args.fleet_clients, rps_clients=args.rps_clients,
        rps_seconds=args.rps_seconds, restart_events=args.restart_events,
        restart_containers=args.restart_containers, restart_rounds=args.restart_rounds,
        only=frozenset(x for x in args.only.split(",") if x),
    )  # fmt: skip
    if args.quick:
        o.rounds, o.warmup, o.stdout_mib, o.stdout_rounds = 3, 1, 32, 1
        o.fleet = min(o.fleet, 10)
        o.concurrent, o.concurrent_rounds = min(o.concurrent, 20), 1
        o.rps_seconds, o.restart_events, o.restart_containers, o.restart_rounds = 1.0, 20_000, 50, 1
    return o


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else "?"


def machine_info() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": f"{os.cpu_count()} x {model}",
        "memory": f"{mem / (1 << 30):.1f} GiB",
        "python": platform.python_version(),
        "conmon": _first_line(["conmon", "--version"]),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


async def _direct_engine(
    stack: AsyncExitStack, name: str, work: Path, lower: Path, tag: str
) -> DirectEngine:
    from garden.config import DEFAULT_UID_BASE
    from garden.linux.cgroups import detect

    parent = f"/{tag}{name[0]}"
    worker = await stack.enter_async_context(
        open_worker(
            binary=runtime_binary(name), work_dir=work / name, lower=lower,
            cgroup_parent=parent, uid_base=DEFAULT_UID_BASE, private=name == "crun",
        )
    )  # fmt: skip
    stack.push_async_callback(detect().remove, parent)
    engine = DirectEngine(name, worker, parent)
    stack.push_async_callback(engine.cleanup)
    await engine.probe()
    return engine


async def _open_engines(
    stack: AsyncExitStack,
    wanted: list[str],
    work: Path,
    tag: str,
    results: Results,
    server_args: tuple[str, ...] = (),
) -> tuple[GardenServer, OursEngine, dict[str, Engine], dict[str, str]]:
    from garden.config import DEFAULT_ROOTFS, DEFAULT_UID_BASE
    from garden.linux.rootfs import prepare_lower

    server = GardenServer(work / "garden", tag, extra_args=server_args)
    stack.push_async_callback(_shutdown_server, server, results)
    await server.start()
    ours = OursEngine(server, garden_version())
    stack.push_async_callback(ours.aclose)
    stack.push_async_callback(ours.cleanup)
    engines: dict[str, Engine] = {"garden": ours}
    skipped: dict[str, str] = {}
    lower = await prepare_lower(Path(DEFAULT_ROOTFS), DEFAULT_UID_BASE, work / "lower-cache")
    for name in wanted:
        try:
            if name in ("runc", "crun"):
                engines[name] = await _direct_engine(stack, name, work, lower, tag)
            elif name == "docker":
                docker = DockerEngine()
                stack.push_async_callback(docker.aclose)
                await docker.probe()
                stack.push_async_callback(docker.cleanup)
                engines[name] = docker
            elif name == "podman":
                podman = PodmanEngine()
                await podman.probe()
                stack.push_async_callback(podman.cleanup)
                engines[name] = podman
        except Unavailable as exc:
            skipped[name] = str(exc)
            print(f"bench: {name} skipped: {exc}", file=sys.stderr)
    return server, ours, engines, skipped


async def _shutdown_server(server: GardenServer, results: Results) -> None:
    await server.stop()
    swept = await server.sweep()
    if swept:
        results.notes.append(f"the sweep after the run released leftovers: {swept}")


async def _measure(ctx: Context, ours: OursEngine, server: GardenServer, results: Results) -> None:
    def add(rows: list[Row]) -> None:
        results.rows.extend(rows)
        for row in rows:
            print(f"bench: {row.title}: done", file=sys.stderr)

    if ctx.wants("create_destroy"):
        add([await create_destroy(ctx, network=False)])
        add([await create_destroy(ctx, network=True)])
    add(await exec_rows(ctx))
    if ctx.wants("concurrent"):
        add([await concurrent_row(ctx)])
    if ctx.wants("files"):
        add(await files_rows(ctx, ours))
    if ctx.wants("info_rps"):
        add([await rps_row(ctx, server.pid)])
    if ctx.wants("fleet"):

        async def restart_ours() -> float:
            await ours.pool.aclose()
            await server.stop()
            return await server.start()

        add(await fleet_rows(ctx, restart_ours))
    if ctx.wants("restart"):
        add(await restart_rows(ctx, server.tag))


async def files_rows(ctx: Context, ours: OursEngine) -> list[Row]:
    """1 GiB stream-in and stream-out through the files API, measured by the files API's own
    benchmark: `bench/files_bench.py`, whose `run(size_mib=, url=, handle=, server_pid=)`
    returns a dict with `upload_mbps`, `download_mbps` and the server's CPU per GiB."""
    titles = {
        "stream_in": "1 GiB stream-in (PUT files)",
        "stream_out": "1 GiB stream-out (GET files)",
    }
    try:
        from bench import files_bench  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        why = "the files API is not on main yet (bench/files_bench.py plugs in here)"
        return [
            Row(key=key, title=title, unit="MB/s", better="higher",
                cells=engine_cells(ctx, {"garden": Cell(skipped=why)}, "not measured"))
            for key, title in titles.items()
        ]  # fmt: skip
    handle, _ = await ours.create(network=False)
    try:
        found: dict[str, object] = await trio.to_thread.run_sync(
            lambda: files_bench.run(
                size_mib=1024, url=ours.server.address, handle=handle, server_pid=ours.server.pid
            )
        )
    finally:
        await ours.destroy(handle)
    rows = []
    for key, (rate, cpu) in {
        "stream_in": ("upload_mbps", "upload_server_cpu_s_per_gib"),
        "stream_out": ("download_mbps", "download_server_cpu_s_per_gib"),
    }.items():
        value = found.get(rate)
        extra: dict[str, float | str] = {}
        if isinstance(found.get(cpu), int | float):
            extra["server CPU s/GiB"] = float(found[cpu])  # type: ignore[arg-type]
        cell = (
            Cell(value=float(value), extra=extra)
            if isinstance(value, int | float)
            else Cell(skipped=f"files_bench gave no {rate}")
        )
        rows.append(
            Row(key=key, title=titles[key], unit="MB/s", better="higher",
                cells=engine_cells(ctx, {"garden": cell}, "not measured (no files API here)"),
                note="measured by bench/files_bench.py (curl as the client)")
        )  # fmt: skip
    return rows


def _server_runtime(state_dir: Path) -> str:
    """The OCI runtime our server picked (recorded under its runtime root)."""
    try:
        return (state_dir / "runtime" / ".garden-runtime").read_text().strip() or "runc"
    except OSError:
        return "runc"


async def run(args: argparse.Namespace) -> Results:
    options = options_from(args)
    wanted = [e for e in args.engines.split(",") if e and e != "garden"]
    unknown = set(wanted) - set(ALL_ENGINES)
    if unknown:
        raise SystemExit(f"bench: unknown engines {sorted(unknown)}")
    BASE_DIR.mkdir(mode=0o711, exist_ok=True)
    BASE_DIR.chmod(0o711)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    work = BASE_DIR / run_id
    work.mkdir(mode=0o711)
    tag = "b" + secrets.token_hex(3)
    results = Results(
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        machine=machine_info(),
        options={k: sorted(v) if isinstance(v, frozenset) else v
                 for k, v in vars(options).items()},
    )  # fmt: skip
    started = time.perf_counter()
    try:
        async with AsyncExitStack() as stack:
            server, ours, engines, skipped = await _open_engines(
                stack, wanted, work, tag, results, tuple(args.server_arg)
            )
            if args.server_arg:
                results.notes.append(f"our server ran with {' '.join(args.server_arg)}")
            await ours.probe_network()
            results.machine["garden runtime"] = _server_runtime(server.state_dir)
            results.engines = {n: e.version for n, e in engines.items()}
            results.engines.update({n: f"not measured: {why}" for n, why in skipped.items()})
            ctx = Context(options=options, work_dir=work, engines=engines, skipped=skipped)
            with trio.move_on_after(args.time_limit) as scope:
                await _measure(ctx, ours, server, results)
            if scope.cancelled_caught:
                results.notes.append(f"stopped at the time limit ({args.time_limit:.0f} s)")
            results.targets = targets.check(results, options.fleet)
            # Leaving the stack destroys every container and sweeps; each step is bounded.
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results.seconds = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        return render(args.render)
    if os.geteuid() != 0:
        print("bench: needs root (containers, cgroups, mounts)", file=sys.stderr)
        return 2
    results = trio.run(run, args)
    print()
    print(markdown_table(results))
    print()
    for t in results.targets:
        mark = "n/m " if t.met is None else ("ok  " if t.met else "MISS")
        print(f"{mark} {t.what}: {t.detail}")
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / time.strftime("%Y-%m-%d-%H%M%S")
        stem.with_suffix(".json").write_bytes(encode(results))
        stem.with_suffix(".md").write_text(markdown(results))
        print(f"\nbench: wrote {stem}.json and {stem}.md")
    return 0
