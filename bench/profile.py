"""`python -m bench.profile WORKLOAD`: where garden-trio's server spends its time in one
workload (create, run, info, stdout), sampled with py-spy (`pip install py-spy`) attached to a
`garden server` process, summarised as the functions with the most samples (own and
cumulative). docs/performance.md quotes its output."""

from __future__ import annotations

import argparse
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from bench.http import Connection
from bench.ours import GardenServer, OursEngine
from bench.run import BASE_DIR


async def _workload(name: str, ours: OursEngine, n: int) -> Callable[[], Awaitable[None]]:
    handle, _ = await ours.create(network=False)

    async def create() -> None:
        for _ in range(n):
            id, _ = await ours.create(network=False)
            await ours.destroy(id)

    async def run() -> None:
        for _ in range(n):
            await ours.exec(handle, ["true"])

    async def stdout() -> None:
        await ours.exec(handle, ["dd", "if=/dev/zero", "bs=1M", f"count={n}"])

    async def info() -> None:
        async def client() -> None:
            conn = await Connection.open(ours.server.address)
            for _ in range(n // 50):
                await conn.call("GET", f"/containers/{handle}/info")
            await conn.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(client)

    return {"create": create, "run": run, "stdout": stdout, "info": info}[name]


def summarise(raw: Path, top: int) -> str:
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            cumulative[frame] += n
    out = [f"{total} samples"]
    out.append("own:")
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in own.most_common(top)]
    out.append("cumulative:")
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in cumulative.most_common(top * 2)]
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> None:
    BASE_DIR.mkdir(mode=0o711, exist_ok=True)
    work = BASE_DIR / f"profile-{secrets.token_hex(3)}"
    server = GardenServer(work, "p" + secrets.token_hex(3))
    await server.start()
    ours = OursEngine(server, "")
    try:
        job = await _workload(args.workload, ours, args.n)
        await job()  # warm-up
        spy = await trio.lowlevel.open_process(
            ["py-spy", "record", "-r", str(args.rate), "-f", "raw", "-o", str(args.out),
             "-p", str(server.pid), *(["--idle"] if args.idle else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await trio.sleep(1.0)  # py-spy attaches
        started = time.perf_counter()
        await job()
        elapsed = time.perf_counter() - started
        spy.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
        await spy.wait()
        print(f"{args.workload} x{args.n}: {elapsed:.2f} s")
        print(summarise(args.out, args.top))
    finally:
        await ours.cleanup()
        await ours.aclose()
        await server.stop()
        await server.sweep()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("workload", choices=["create", "run", "info", "stdout"])
    p.add_argument("-n", type=int, default=50, help="repetitions (stdout: MiB)")
    p.add_argument("--rate", type=int, default=1000, help="samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--idle", action="store_true", help="also sample idle threads")
    p.add_argument("--out", type=Path, default=Path("/tmp/garden-profile.raw"))
    args = p.parse_args()
    if shutil.which("py-spy") is None:
        print("bench.profile: needs py-spy on PATH (pip install py-spy)", file=sys.stderr)
        return 2
    trio.run(main_async, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
