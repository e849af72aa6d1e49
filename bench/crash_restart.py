"""Restart after a crash with many live containers: `python -m bench.crash_restart`.

Creates `--containers` real containers once (on this 2-core VM about 3-4 minutes for 1,000),
then `--rounds` times SIGKILLs the server and starts it again, timing exec → /ping answering,
split by the server's own log lines (exec + imports + replay, recovery + HTTP start, until
/ping). With `--work-dir` and `--keep` the fleet stays for another run (of other code); a run
with `--reuse` measures it again without creating anything. Without `--keep`, everything is
destroyed at the end and the tag swept.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import statistics
import time
from pathlib import Path

import trio

from bench.http import Pool
from bench.ours import GardenServer, pid_cpu_seconds
from bench.restart import phases

CREATE_CLIENTS = 6
_RECOVERED = re.compile(r"recovered (containers=.*)")
_FIELD = re.compile(r"(adopt|sweep|network)=([0-9.]+)")


async def _create_fleet(server: GardenServer, n: int) -> None:
    pool = Pool(server.address)
    counter = iter(range(n))
    started = time.perf_counter()

    async def client() -> None:
        for i in counter:
            body = json.dumps({"handle": f"fleet-{i}"}).encode()
            status, answer = await pool.call("POST", "/containers", body)
            if status != 200:
                raise RuntimeError(f"create fleet-{i}: {status} {answer[:300]!r}")
            if i % 100 == 99:
                print(f"  {i + 1} created, {time.perf_counter() - started:.0f} s", flush=True)

    async with trio.open_nursery() as nursery:
        for _ in range(CREATE_CLIENTS):
            nursery.start_soon(client)
    await pool.aclose()


async def _destroy_all(server: GardenServer) -> None:
    pool = Pool(server.address)
    status, body = await pool.call("GET", "/containers")
    handles = iter(json.loads(body)["handles"] if status == 200 else [])

    async def client() -> None:
        for handle in handles:
            await pool.call("DELETE", f"/containers/{handle}")

    async with trio.open_nursery() as nursery:
        for _ in range(CREATE_CLIENTS):
            nursery.start_soon(client)
    await pool.aclose()


async def _crash(server: GardenServer) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    await server.process.wait()


def _compile_garden() -> None:
    """Write garden's bytecode: with PYTHONDONTWRITEBYTECODE set (as in some shells here),
    every start would otherwise compile its ~90 modules again (about 0.5 s of CPU), which
    an installed server never does."""
    import compileall

    import garden

    compileall.compile_dir(Path(garden.__file__).parent, quiet=1)


async def run(args: argparse.Namespace) -> dict[str, object]:
    _compile_garden()
    work = Path(args.work_dir or f"/var/tmp/garden-bench/crash-restart-{secrets.token_hex(3)}")
    meta = work / "bench.json"
    kept: dict[str, str] = json.loads(meta.read_text()) if args.reuse else {}
    server = GardenServer(work, kept.get("tag") or "b" + secrets.token_hex(3))
    if kept:
        server.network_pool = kept["pool"]
    samples: list[dict[str, float]] = []
    try:
        await server.start()
        if not args.reuse:
            work.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps({"tag": server.tag, "pool": server.network_pool}))
            print(f"creating {args.containers} containers in {work}", flush=True)
            await _create_fleet(server, args.containers)
        for i in range(args.rounds):
            await _crash(server)
            exec_wall = time.time()
            seconds = await server.start()
            tail = server.log_tail(1 << 16)
            found = phases(tail, exec_wall)
            sample = {
                "total": seconds,
                "cpu": pid_cpu_seconds(server.pid),
                "children_cpu": _children_cpu_seconds(server.pid),
                **found,
            }
            for m in _RECOVERED.finditer(tail):  # the last one is this start's
                sample.update({k: float(v) for k, v in _FIELD.findall(m.group(1))})
            samples.append(sample)
            print(f"  round {i + 1}: {seconds:.3f} s  {found}", flush=True)
    finally:
        with trio.CancelScope(shield=True):
            if not args.keep and server.process is not None and server.process.poll() is None:
                await _destroy_all(server)
            await server.stop()
            if not args.keep:
                await server.sweep()
    totals = [s["total"] for s in samples]
    result: dict[str, object] = {
        "containers": args.containers,
        "rounds": len(samples),
        "median_s": statistics.median(totals) if totals else None,
        "max_s": max(totals) if totals else None,
        "min_s": min(totals) if totals else None,
        "cpu_median_s": statistics.median(s["cpu"] for s in samples) if samples else None,
        "children_cpu_median_s": _median(samples, "children_cpu"),
        "adopt_median_s": _median(samples, "adopt"),
        "sweep_median_s": _median(samples, "sweep"),
        "network_median_s": _median(samples, "network"),
        "replayed_median_s": statistics.median(s.get("replayed", 0.0) for s in samples)
        if samples
        else None,
        "serving_median_s": statistics.median(s.get("serving", 0.0) for s in samples)
        if samples
        else None,
    }
    print(json.dumps(result, indent=2))
    return result


def _children_cpu_seconds(pid: int) -> float:
    """cutime + cstime: the CPU of the children it waited for (runc, tc, nft...)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _median(samples: list[dict[str, float]], key: str) -> float | None:
    values = [s[key] for s in samples if key in s]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work-dir", default="")
    parser.add_argument("--keep", action="store_true", help="leave the fleet running")
    parser.add_argument("--reuse", action="store_true", help="measure a kept fleet again")
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
