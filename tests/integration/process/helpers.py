"""Running one process in the test container through the real monitor and log reader."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

from garden.linux import monitor, output
from garden.linux import process_spec as ps
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
    return ps.prepare_process(ctr.root, path=path, args=args, container_env=ctr.env, **kw)


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
