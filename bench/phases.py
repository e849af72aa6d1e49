"""`python -m bench.phases`: where a create, a destroy and a run of `true` spend their time,
step by step: the server runs in this process with a timer around each step of the kernel side
(overlay, runtime, conmon, cgroups), around every journal record (the fsync) and around the
whole request as the client sees it. Medians in ms; docs/performance.md quotes the output."""

from __future__ import annotations

import argparse
import functools
import secrets
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from bench.http import Connection
from bench.ours import GardenServer, bench_pool
from bench.run import BASE_DIR

Timings = defaultdict[str, list[float]]


def _timed(timings: Timings, label: str | Callable[..., str], fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            name = label if isinstance(label, str) else label(*args, **kwargs)
            timings[name].append((time.perf_counter() - started) * 1000)

    return wrapper


def _timed_sync(timings: Timings, label: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[label].append((time.perf_counter() - started) * 1000)

    return wrapper


def instrument(timings: Timings) -> None:
    """Put timers around the steps (module attributes, so for this process only)."""
    from garden.events.journal import Journal
    from garden.linux import containers, monitor, process_spec, processes
    from garden.linux.cgroups.v1 import CgroupsV1
    from garden.linux.net.networker import LinuxNetworker
    from garden.linux.runtime import Runtime

    def record_label(_self: object, *events: object, **_kw: object) -> str:
        return "journal.record " + "+".join(type(e).__name__ for e in events)

    setattr(Journal, "record", _timed(timings, record_label, Journal.record))  # noqa: B010
    steps = [
        (containers, "prepare_lower", "create: lower layer (cached)"),
        (containers, "mount_overlay", "create: overlay mount"),
        (containers, "unmount_overlay", "destroy: overlay umount"),
        (containers, "remove_tree", "destroy: remove the bundle dir"),
        (containers, "kill_and_wait", "destroy: kill init, wait"),
        (Runtime, "run", "create: runtime run -d"),
        (Runtime, "delete", "destroy: runtime delete"),
        (CgroupsV1, "remove", "destroy: cgroup rmdir"),
        (LinuxNetworker, "setup", "create: network set-up"),
        (LinuxNetworker, "teardown", "destroy: network teardown"),
        (processes.LinuxProcesses, "spawn", "run: spawn (prepare + conmon)"),
        (monitor, "_run_conmon", "run: conmon + runtime exec -d until the pid"),
        (monitor, "_run_garden_monitor", "run: garden-monitor + its exec until the pid"),
        (monitor, "wait_exit", "run: after the pid, until conmon has exited"),
    ]
    for owner, name, label in steps:
        setattr(owner, name, _timed(timings, label, getattr(owner, name)))
    process_spec.prepare_process = _timed_sync(
        timings, "run: prepare process.json", process_spec.prepare_process
    )
    sync_steps = [
        (monitor, "_prepare_dirs", "run: process dir + process.json written"),
        (monitor, "pid_start_time", "run: start time of a pid (/proc)"),
    ]
    for owner, name, label in sync_steps:
        setattr(owner, name, _timed_sync(timings, label, getattr(owner, name)))
    real_to_thread = trio.to_thread.run_sync

    async def to_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await real_to_thread(fn, *args, **kwargs)
        finally:
            timings["trio.to_thread.run_sync (any, with the hop)"].append(
                (time.perf_counter() - started) * 1000
            )

    setattr(trio.to_thread, "run_sync", to_thread)  # noqa: B010


async def measure(n: int) -> Timings:
    from garden.config import ServerConfig
    from garden.linux import sealed_exe
    from garden.linux.runtime import recorded_choice
    from garden.main import serve

    timings: Timings = defaultdict(list)
    instrument(timings)
    work = BASE_DIR / f"phases-{secrets.token_hex(3)}"
    work.mkdir(parents=True, mode=0o711)
    config = msgspec.convert(
        {"state_dir": str(work / "state"), "bind_port": 0, "tag": "ph" + secrets.token_hex(3),
         "handle_signals": False, "log_level": "warning", "network_pool": bench_pool()},
        ServerConfig,
    )  # fmt: skip
    client: Timings = defaultdict(list)
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, config)
            conn = await Connection.open(binds[0])
            for _ in range(n):
                started = time.perf_counter()
                _, body = await conn.call("POST", "/containers", b"{}")
                client["client: POST /containers"].append((time.perf_counter() - started) * 1000)
                handle = msgspec.json.decode(body)["handle"]
                started = time.perf_counter()
                await conn.call("DELETE", f"/containers/{handle}")
                client["client: DELETE /containers/:h"].append(
                    (time.perf_counter() - started) * 1000
                )
            _, body = await conn.call("POST", "/containers", b"{}")
            handle = msgspec.json.decode(body)["handle"]
            _, body = await conn.call("GET", f"/containers/{handle}/info")
            cid = msgspec.json.decode(body)["container_path"].rsplit("/", 1)[1]
            root = work / "state" / "runtime"
            runtime = recorded_choice(root) or "runc"
            sealed = sealed_exe.sealed_copy(shutil.which(runtime) or runtime)
            for _ in range(n):
                started = time.perf_counter()
                response = await conn.request(
                    "POST", f"/containers/{handle}/processes", b'{"path": "true"}'
                )
                client["client: run true, response headers"].append(
                    (time.perf_counter() - started) * 1000
                )
                await response.read()
                client["client: run true, exit status"].append(
                    (time.perf_counter() - started) * 1000
                )
                started = time.perf_counter()
                await trio.run_process([runtime, "--root", str(root), "exec", cid, "true"])
                client[f"bare: {runtime} exec true"].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await trio.run_process([sealed, "--root", str(root), "exec", cid, "true"])
                client[f"bare: {runtime} exec true, sealed copy"].append(
                    (time.perf_counter() - started) * 1000
                )
            await conn.call("DELETE", f"/containers/{handle}")
            await conn.aclose()
            nursery.cancel_scope.cancel()
    finally:
        server = GardenServer(work, config.tag)
        server.state_dir = Path(config.state_dir)
        server.network_pool = config.network_pool
        await server.sweep()
        shutil.rmtree(work, ignore_errors=True)
    timings.update(client)
    return timings


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__)
    p.add_argument("-n", type=int, default=30, help="creates and runs")
    p.add_argument(
        "--unsealed",
        action="store_true",
        help="run the runtime's file, not the sealed in-memory copy (for a before/after)",
    )
    args = p.parse_args()
    if args.unsealed:
        from garden.linux import runtime

        def refuse(binary: str) -> str:
            raise OSError("--unsealed")

        setattr(runtime, "sealed_copy", refuse)  # noqa: B010
    timings = trio.run(measure, args.n)
    width = max(map(len, timings))
    for label in sorted(timings):
        values = timings[label]
        print(f"{label:{width}}  median {statistics.median(values):7.2f} ms  n={len(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
