"""runc and crun driven directly (`bench.direct`), each from its own worker process: crun's
needs a private mount namespace on this host (see `bench.direct_worker`), and runc gets the
same treatment so that both are measured by the same code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from bench.direct import Created
from bench.direct import Executed as DirectExecuted
from bench.engine import Engine, Executed, Pids, Unavailable
from bench.memory import pids_in_cgroups


class _Answer(msgspec.Struct):
    id: int
    result: Any = None
    error: str | None = None
    trace: str = ""


class Worker:
    """Requests to a `bench.direct_worker` process, answered concurrently."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._next = 0
        self._waiting: dict[int, tuple[trio.Event, list[_Answer]]] = {}
        self._send_lock = trio.Lock()

    async def _read_answers(self) -> None:
        decoder = msgspec.json.Decoder(_Answer)
        buf = b""
        while chunk := await self._stdout.receive_some(65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                answer = decoder.decode(line)
                event, box = self._waiting.pop(answer.id)
                box.append(answer)
                event.set()
        for event, _ in self._waiting.values():
            event.set()

    async def call(self, op: str, **args: object) -> Any:
        self._next += 1
        request_id = self._next
        event, box = trio.Event(), list[_Answer]()
        self._waiting[request_id] = (event, box)
        line = msgspec.json.encode({"id": request_id, "op": op, "args": args}) + b"\n"
        async with self._send_lock:
            await self._stdin.send_all(line)
        await event.wait()
        if not box:
            raise RuntimeError(f"the {op} worker exited")
        answer = box[0]
        if answer.error is not None:
            raise RuntimeError(f"{op}: {answer.error}\n{answer.trace}")
        return answer.result


@asynccontextmanager
async def open_worker(
    *, binary: str, work_dir: Path, lower: Path, cgroup_parent: str, uid_base: int, private: bool
) -> AsyncIterator[Worker]:
    argv = [
        sys.executable, "-m", "bench.direct_worker", "--binary", binary,
        "--root", str(work_dir / "runtime"), "--work-dir", str(work_dir / "bundles"),
        "--lower", str(lower), "--cgroup-parent", cgroup_parent, "--uid-base", str(uid_base),
    ]  # fmt: skip
    if private:
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            *argv,
            "--hide-cgroup2-controllers",
        ]
    cwd = Path(__file__).resolve().parent.parent
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(cwd)
    )
    worker = Worker(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker._read_answers)
            try:
                yield worker
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(60):
                    await worker._stdin.aclose()
                    await process.wait()
                nursery.cancel_scope.cancel()
    finally:
        if process.poll() is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


class DirectEngine(Engine):
    def __init__(self, name: str, worker: Worker, cgroup_parent: str) -> None:
        super().__init__()
        self.name = name
        self.worker = worker
        self.cgroup_parent = cgroup_parent
        self._inits: dict[str, int] = {}

    async def probe(self) -> None:
        """Create and destroy one container: `Unavailable` if the runtime refuses this host."""
        self.version = str(await self.worker.call("version"))
        try:
            id, _ = await self.create(network=False)
        except RuntimeError as exc:
            raise Unavailable(f"{self.name} cannot start a container here: {exc}") from exc
        await self.destroy(id)

    def supports_network(self) -> bool:
        return False  # a runtime alone makes no network: that is what the engines add

    async def create(self, *, network: bool) -> tuple[str, float]:
        created = msgspec.convert(await self.worker.call("create"), Created)
        self.live.add(created.id)
        self._inits[created.id] = created.pid
        return created.id, created.seconds

    async def destroy(self, id: str) -> float:
        seconds = float(await self.worker.call("destroy", id=id))
        self.live.discard(id)
        self._inits.pop(id, None)
        return seconds

    async def exec(self, id: str, argv: list[str]) -> Executed:
        done = msgspec.convert(await self.worker.call("exec", id=id, argv=argv), DirectExecuted)
        return Executed(done.status, done.stdout_bytes, done.seconds)

    async def pids(self, ids: list[str]) -> Pids:
        from garden.linux.cgroups import detect

        host = detect().host_path("pids", self.cgroup_parent)
        inits = pids_in_cgroups(host) if host is not None and host.exists() else []
        return Pids(inits=inits)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self.worker.call("sweep")


def runtime_binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise Unavailable(f"{name} is not installed")
    return binary
