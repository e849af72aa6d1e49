"""Podman through its CLI (it has no daemon; the CLI is how it is used): `run -d`, `exec`,
`rm -f`. On this host it needs runc (crun refuses hybrid cgroups), the cgroupfs manager and
file events (no systemd), and explicit `--ulimit`s: its defaults ask for more than a process
without CAP_SYS_RESOURCE may grant."""

from __future__ import annotations

import resource
import secrets
import shutil
import subprocess
import time

import trio

from bench.engine import INIT_ARGV, INIT_PATH, Engine, Executed, Pids, Unavailable
from bench.memory import cmdline, pids_named

IMAGE = "localhost/garden-bench/busybox:latest"
LABEL = "garden-bench"  # every container the benchmarks make carries it


def _limit(res: int, cap: int) -> str:
    """soft = hard = ours, at most `cap`: a container cannot get more than its runtime holds."""
    hard = resource.getrlimit(res)[1]
    value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    return f"{value}:{value}"


async def run_counting(argv: list[str]) -> tuple[int, int, bytes]:
    """Run `argv`, counting its stdout without keeping it; (exit status, bytes, stderr tail)."""
    with open("/dev/null", "rb") as devnull:
        process = await trio.lowlevel.open_process(
            argv, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    assert process.stdout is not None and process.stderr is not None
    total, err = 0, b""

    async def drain_stderr() -> None:
        nonlocal err
        assert process.stderr is not None
        while chunk := await process.stderr.receive_some(65536):
            err = (err + chunk)[-2000:]

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain_stderr)
            while chunk := await process.stdout.receive_some(1 << 20):
                total += len(chunk)
        status = await process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        await process.stdout.aclose()
        await process.stderr.aclose()
    return status, total, err


class PodmanEngine(Engine):
    name = "podman"

    def __init__(self) -> None:
        super().__init__()
        binary = shutil.which("podman")
        if binary is None:
            raise Unavailable("podman is not installed: run bench/install-engines.sh")
        self.base = [
            binary, "--runtime", "runc", "--cgroup-manager", "cgroupfs",
            "--events-backend", "file", "--log-level", "error",
        ]  # fmt: skip
        self.run_opts = [
            # Measured here: podman's runc refuses nproc above 32768 even where our hard limit
            # is higher (and `--ulimit host` fails on nofile).
            "--ulimit", f"nofile={_limit(resource.RLIMIT_NOFILE, 1 << 20)}",
            "--ulimit", f"nproc={_limit(resource.RLIMIT_NPROC, 32768)}",
            "-v", f"{INIT_PATH}:{INIT_ARGV[0]}:ro",
        ]  # fmt: skip

    async def _run(self, *args: str) -> bytes:
        result = await trio.run_process(
            [*self.base, *args], capture_stdout=True, capture_stderr=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"podman {args[0]}: {result.stderr.decode(errors='replace')[-500:]}")
        return bytes(result.stdout)

    async def probe(self) -> None:
        self.version = (await self._run("--version")).decode().strip()
        try:
            await self._run("image", "exists", IMAGE)
        except RuntimeError as exc:
            raise Unavailable(f"image {IMAGE} missing: run bench/install-engines.sh") from exc
        try:
            id, _ = await self.create(network=False)
        except RuntimeError as exc:
            raise Unavailable(f"podman cannot start a container here: {exc}") from exc
        await self.destroy(id)

    async def create(self, *, network: bool) -> tuple[str, float]:
        name = f"garden-bench-{secrets.token_hex(6)}"
        started = time.perf_counter()
        try:
            out = await self._run(
                "run", "-d", "--name", name, "--label", LABEL, "--network",
                "bridge" if network else "none", *self.run_opts, IMAGE, *INIT_ARGV,
            )  # fmt: skip
        except RuntimeError:
            # A container that was created but could not start stays behind: remove it.
            await trio.run_process([*self.base, "rm", "-f", name], capture_stdout=True,
                                   capture_stderr=True, check=False)  # fmt: skip
            raise
        seconds = time.perf_counter() - started
        id = out.decode().strip().splitlines()[-1]
        self.live.add(id)
        return id, seconds

    async def cleanup(self) -> None:
        """Destroy what is live, then every container any bench run left (by its label)."""
        await super().cleanup()
        out = await self._run("ps", "-aq", "--filter", f"label={LABEL}")
        for id in out.decode().split():
            await self._run("rm", "-f", "-t", "0", id)

    async def destroy(self, id: str) -> float:
        started = time.perf_counter()
        await self._run("rm", "-f", "-t", "0", id)
        self.live.discard(id)
        return time.perf_counter() - started

    async def exec(self, id: str, argv: list[str]) -> Executed:
        started = time.perf_counter()
        status, total, err = await run_counting([*self.base, "exec", id, *argv])
        seconds = time.perf_counter() - started
        if status == 125:
            raise RuntimeError(f"podman exec: {err.decode(errors='replace')}")
        return Executed(status, total, seconds)

    async def pids(self, ids: list[str]) -> Pids:
        wanted = set(ids)
        monitors = [p for p in pids_named("conmon") if wanted & set(cmdline(p))]
        inits = []
        for id in ids:
            out = await self._run("inspect", "--format", "{{.State.Pid}}", id)
            pid = int(out.decode().strip() or 0)
            if pid:
                inits.append(pid)
        return Pids(monitors=monitors, inits=inits)
