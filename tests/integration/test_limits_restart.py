"""Limits are facts of the event log: they survive a SIGKILLed server, and the OOM watch is armed
again after a restart, also for an OOM that happened while the server was down."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ServerProcess, in_runtime, leftovers

pytestmark = pytest.mark.root

MiB = 1 << 20
CGROUP = Path("/sys/fs/cgroup")
ALL_LIMITS = {
    "memory": {"limit_in_bytes": 48 * MiB},
    "cpu": {"limit_in_shares": 300},
    "pids": {"max": 30},
    "disk": {"byte_hard": 16 * MiB, "inode_soft": 500},
}


def exec_in(sp: ServerProcess, cid: str, script: str) -> subprocess.CompletedProcess[str]:
    return in_runtime(sp.state_dir, "exec", cid, "sh", "-c", script)


def info(c: httpx.Client, handle: str) -> dict[str, Any]:
    r = c.get(f"/containers/{handle}/info")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_stopped(c: httpx.Client, handle: str, timeout: float = 15) -> dict[str, Any]:
    """No push for state changes in the API: ask until it says stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = info(c, handle)
        if body["state"] == "stopped":
            return body
        time.sleep(0.02)
    raise AssertionError(f"{handle} did not stop: {info(c, handle)}")


def kernel_limits(sp: ServerProcess, cid: str) -> tuple[str, str, str]:
    base = f"{sp.tag}/{cid}"
    return (
        (CGROUP / "memory" / base / "memory.limit_in_bytes").read_text().strip(),
        (CGROUP / "cpu" / base / "cpu.shares").read_text().strip(),
        (CGROUP / "pids" / base / "pids.max").read_text().strip(),
    )


def test_limits_survive_sigkill_and_oom_watch_is_rearmed(server_process: ServerProcess) -> None:
    sp = server_process
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        assert c.post("/containers", json={"handle": "l", "limits": ALL_LIMITS}).status_code == 200
        r = c.put("/containers/l/limits/memory", json={"limit_in_bytes": 40 * MiB})
        assert r.json() == {"limit_in_bytes": 40 * MiB}
        r = c.put("/containers/l/limits/disk", json={"byte_hard": 24 * MiB})
        assert r.status_code == 200, r.text
        before = {k: c.get(f"/containers/l/limits/{k}").json() for k in ALL_LIMITS}
        cid = Path(info(c, "l")["container_path"]).name
    assert before["disk"]["inode_soft"] == 500
    sp.kill(signal.SIGKILL)
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        assert {k: c.get(f"/containers/l/limits/{k}").json() for k in ALL_LIMITS} == before
        assert kernel_limits(sp, cid) == (str(40 * MiB), "300", "30")
        # The disk limit in force after the restart is the raised one.
        assert exec_in(sp, cid, "dd if=/dev/zero of=/f bs=1M count=20").returncode == 0
        assert exec_in(sp, cid, "dd if=/dev/zero of=/g bs=1M count=8").returncode != 0
        # The OOM watch was armed again.
        assert exec_in(sp, cid, "x=a; while :; do x=$x$x; done").returncode == 137
        assert wait_stopped(c, "l")["events"] == ["oom"]
        assert c.delete("/containers/l").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def test_oom_while_the_server_is_down_is_noticed_at_start(server_process: ServerProcess) -> None:
    sp = server_process
    sp.start()
    limits = {"memory": {"limit_in_bytes": 32 * MiB}}
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        assert c.post("/containers", json={"handle": "o", "limits": limits}).status_code == 200
        cid = Path(info(c, "o")["container_path"]).name
    sp.kill(signal.SIGKILL)
    assert exec_in(sp, cid, "x=a; while :; do x=$x$x; done").returncode == 137
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        body = wait_stopped(c, "o")
        assert body["events"] == ["oom"]
        assert c.delete("/containers/o").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def test_orphaned_disk_layer_is_swept_at_start(server_process: ServerProcess) -> None:
    """A container with a disk limit that the log does not know (its records never reached the
    disk): its layer mount and loop device are released at start-up like the rest."""
    from garden.linux import loop
    from tests.integration.test_restart import _renumber

    sp = server_process
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        spec = {"handle": "orphan", "limits": {"disk": {"byte_hard": 8 * MiB}}}
        assert c.post("/containers", json=spec).status_code == 200
    sp.kill()
    assert loop.backed_under(sp.state_dir / "containers")  # the layer is still attached
    log = sp.state_dir / "events.log"
    kept = [line for line in log.read_bytes().splitlines(keepends=True) if b'"orphan"' not in line]
    log.write_bytes(b"".join(_renumber(kept)))
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        assert c.get("/containers").json() == {"handles": []}
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []
