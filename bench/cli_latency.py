"""How long `garden` commands take end to end, each a whole new process, beside `curl` doing
the same request and a bare `python -c pass`. Run against a running server:

    .venv/bin/python bench/cli_latency.py [--target URL] [-n 30]

Prints median and p90 wall time, and the CPU time of the client process (less disturbed than
wall time when the machine is busy). The bar for `garden run H -- echo hi` is a 150 ms median.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def measure(argv: list[str], n: int, env: dict[str, str]) -> tuple[float, float, float]:
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env, check=False)
        wall.append((time.perf_counter() - t) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr.decode()}")
    wall.sort()
    return statistics.median(wall), wall[int(len(wall) * 0.9)], statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target", default=os.environ.get("GARDEN_TARGET", "http://127.0.0.1:7777")
    )
    parser.add_argument("-n", type=int, default=30)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["GARDEN_TARGET"] = args.target
    garden = str(BIN / "garden")
    handle = subprocess.run(
        [garden, "create"], capture_output=True, env=env, check=True, text=True
    ).stdout.strip()
    try:
        subprocess.run([garden, "run", handle, "--", "true"], env=env, check=True)  # warm up
        rows = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("garden ping", [garden, "ping"]),
            ("garden list --json", [garden, "list", "--json"]),
            ("garden run H -- echo hi", [garden, "run", handle, "--", "echo", "hi"]),
        ]
        if shutil.which("curl") and args.target.startswith("http://"):
            body = '{"path":"echo","args":["hi"]}'
            url = f"{args.target}/containers/{handle}/processes"
            rows.append(("curl: the same run", ["curl", "-sf", "-XPOST", "-d", body, url]))
        print(f"{'command':<26} {'median ms':>10} {'p90 ms':>8} {'client cpu ms':>14}")
        for name, argv in rows:
            median, p90, cpu = measure(argv, args.n, env)
            print(f"{name:<26} {median:>10.1f} {p90:>8.1f} {cpu:>14.1f}")
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
    finally:
        subprocess.run([garden, "destroy", handle], env=env, check=False)


if __name__ == "__main__":
    main()
