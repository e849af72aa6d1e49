"""Running one process in the test container through the real monitor and log reader."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from garden.linux import monitor, output
from garden.linux import process_spec as ps
from garden.linux.passthrough import OrderIndex
from garden.linux.plan import SpawnedProcess
from tests.integration.process.conftest import RUNC, Container


@dataclass
class Result:
    facts: SpawnedProcess
    stdout: bytes
    stderr: bytes
    chunks: list[output.Chunk]
    status: int


def process_json(ctr: Container, path: str, *args: str, **kw: Any) -> dict[str, Any]:
    kw.setdefault("user", "root")
    return ps.prepare_process(ctr.root, path=path, args=args, container_env=ctr.env, **kw).process


async def spawn(ctr: Container, process: dict[str, Any], *, stdin: bool = False) -> SpawnedProcess:
    return await monitor.spawn(
        runtime=RUNC,
        runtime_root=ctr.runtime_root,
        container_id=ctr.id,
        process_dir=ctr.processes / uuid.uuid4().hex,
        process=process,
        socket_dir=ctr.socket_dir,
        stdin=stdin,
    )


async def collect(watcher: output.LogWatcher, facts: SpawnedProcess) -> list[output.Chunk]:
    chunks = []
    follow = watcher.follow(facts.log_path, facts.exit_path)
    async with contextlib.aclosing(follow) as it:
        async for chunk in it:
            chunks.append(chunk)
    return chunks


async def run(
    ctr: Container, watcher: output.LogWatcher, path: str, *args: str, **kw: Any
) -> Result:
    """Spawn, read all output, wait for the exit status, clean up."""
    facts = await spawn(ctr, process_json(ctr, path, *args, **kw))
    try:
        chunks = await collect(watcher, facts)
        status = await monitor.wait_exit(facts)
    finally:
        await monitor.cleanup(facts)
    return Result(
        facts=facts,
        stdout=b"".join(c.data for c in chunks if c.source == "stdout"),
        stderr=b"".join(c.data for c in chunks if c.source == "stderr"),
        chunks=chunks,
        status=status,
    )


class Indexed:
    """A passthrough process and the index the server would keep of it (pinned, as the
    server's is, until its first reader comes: else its front may be freed before)."""

    def __init__(self, watcher: output.LogWatcher, cap: int, pin: bool) -> None:
        self.watcher, self.cap, self.pin = watcher, cap, pin
        self.index: OrderIndex | None = None
        self.wd = -1

    def start(self, pdir: Path) -> None:
        self.index = OrderIndex(pdir, cap=self.cap, pin=self.pin)
        self.wd = self.watcher.add_index(self.index)

    def stop(self) -> None:
        """What a server crash does to the index: it stops being kept."""
        if self.index is not None:
            self.watcher.remove_index(self.wd)
            self.index.close()
            self.index = None


@contextlib.asynccontextmanager
async def passthrough(
    ctr: Container,
    watcher: output.LogWatcher,
    script: str,
    *,
    cap: int = 16 << 20,
    pin: bool = True,
    garden_monitor: str | None = None,
) -> AsyncIterator[tuple[SpawnedProcess, Indexed]]:
    indexed = Indexed(watcher, cap, pin)
    facts = await monitor.spawn(
        runtime=RUNC,
        runtime_root=ctr.runtime_root,
        container_id=ctr.id,
        process_dir=ctr.processes / uuid.uuid4().hex,
        process=process_json(ctr, "sh", "-c", script),
        socket_dir=ctr.socket_dir,
        log_format="passthrough",
        garden_monitor=garden_monitor,
        before_start=indexed.start,
    )
    try:
        assert facts.log_format == "passthrough"
        yield facts, indexed
    finally:
        indexed.stop()
        await monitor.cleanup(facts)
    assert not Path(facts.process_dir).exists()
