"""Helpers for the services tests start as processes of their own (a `garden server`, a
`docker-registry`): a free loopback port, and waiting until the service answers."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_answering(
    url: str,
    ready: set[int],
    proc: subprocess.Popen[bytes],
    log: Path,
    *,
    timeout: float,
    what: str,
) -> None:
    """Return once GET `url` answers with a status in `ready`; raise (with the end of `log`)
    if `proc` exits first or `timeout` seconds pass."""
    with httpx.Client() as c:
        for _ in range(int(timeout / 0.025)):
            try:
                if c.get(url).status_code in ready:
                    return
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                break
            # Waiting for another process to bind its port: nothing to await but time.
            time.sleep(0.025)
    raise AssertionError(f"{what} did not start:\n{log.read_text()[-3000:]}")
