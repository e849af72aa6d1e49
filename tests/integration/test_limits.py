"""Memory, cpu, pids and disk limits through the API, checked in the kernel's own files and by
processes in the container running into them; OOM stops the container; stats follow."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from garden.linux.cgroups import detect
from tests.integration.conftest import Server, in_runtime, runtime_binary

pytestmark = pytest.mark.root

MiB = 1 << 20
CGROUP = Path("/sys/fs/cgroup")


def runc(server: Server, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return in_runtime(server.config.state_dir, *args, timeout=timeout)


def detached(server: Server, cid: str, *argv: str) -> None:
    """Start a process in the container and leave it running (no pipes held open)."""
    subprocess.run(
        [
            runtime_binary(),
            "--root",
            f"{server.config.state_dir}/runtime",
            "exec",
            "-d",
            cid,
            *argv,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=60,
    )


def sh(server: Server, cid: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in the container (the process API is another issue's)."""
    return runc(server, "exec", cid, "sh", "-c", script)


async def create(server: Server, handle: str, **spec: Any) -> dict[str, Any]:
    r = await server.client.post("/containers", json={"handle": handle, **spec})
    assert r.status_code == 200, r.text
    info: dict[str, Any] = (await server.client.get(f"/containers/{handle}/info")).json()
    return info


def cid_of(info: dict[str, Any]) -> str:
    return Path(info["container_path"]).name


def cgroup_file(server: Server, controller: str, cid: str, name: str) -> str:
    return (CGROUP / controller / server.config.tag / cid / name).read_text().strip()


async def wait_until_stopped(server: Server, handle: str, timeout: float = 15) -> dict[str, Any]:
    """The API has no push for state changes (yet): ask until it says stopped."""
    with trio.fail_after(timeout):
        while True:
            info: dict[str, Any] = (await server.client.get(f"/containers/{handle}/info")).json()
            if info["state"] == "stopped":
                return info
            await trio.sleep(0.02)


async def test_create_time_limits_are_in_the_kernel(server: Server) -> None:
    limits = {
        "memory": {"limit_in_bytes": 64 * MiB},
        "cpu": {"limit_in_shares": 512},
        "pids": {"max": 40},
    }
    info = await create(server, "lim", limits=limits)
    cid = cid_of(info)
    assert cgroup_file(server, "memory", cid, "memory.limit_in_bytes") == str(64 * MiB)
    assert cgroup_file(server, "memory", cid, "memory.memsw.limit_in_bytes") == str(64 * MiB)
    assert cgroup_file(server, "cpu", cid, "cpu.shares") == "512"
    assert cgroup_file(server, "pids", cid, "pids.max") == "40"
    c = server.client
    assert (await c.get("/containers/lim/limits/memory")).json() == {"limit_in_bytes": 64 * MiB}
    assert (await c.get("/containers/lim/limits/cpu")).json() == {"limit_in_shares": 512}
    assert (await c.get("/containers/lim/limits/pids")).json() == {"max": 40}
    assert info["memory_stat"]["limit_in_bytes"] == 64 * MiB
    assert info["memory_stat"]["usage_in_bytes"] > 0
    assert info["cpu_stat"]["usage"] > 0
    assert info["pids_stat"] == {"current": 1, "max": 40, "max_reached": 0}


async def test_put_limits_reach_the_kernel_and_answer_what_is_in_force(server: Server) -> None:
    c = server.client
    cid = cid_of(await create(server, "put"))
    assert cgroup_file(server, "pids", cid, "pids.max") == "max"
    assert (await c.get("/containers/put/limits/memory")).json() == {"limit_in_bytes": 0}

    # Memory: raise and lower in both orders of memory and memory+swap; page-rounded.
    for value, expected in ((32 * MiB, 32 * MiB), (256 * MiB, 256 * MiB), (50_000_000, 49999872)):
        r = await c.put("/containers/put/limits/memory", json={"limit_in_bytes": value})
        assert r.status_code == 200, r.text
        assert r.json() == {"limit_in_bytes": expected}
        assert cgroup_file(server, "memory", cid, "memory.limit_in_bytes") == str(expected)
        assert cgroup_file(server, "memory", cid, "memory.memsw.limit_in_bytes") == str(expected)
    # A PUT without fields changes nothing and answers the limit in force.
    r = await c.put("/containers/put/limits/memory", json={})
    assert r.json() == {"limit_in_bytes": 49999872}
    # 0 removes the limit.
    r = await c.put("/containers/put/limits/memory", json={"limit_in_bytes": 0})
    assert r.json() == {"limit_in_bytes": 0}
    assert int(cgroup_file(server, "memory", cid, "memory.limit_in_bytes")) > 1 << 62

    r = await c.put("/containers/put/limits/cpu", json={"limit_in_shares": 2048})
    assert r.json() == {"limit_in_shares": 2048}
    assert cgroup_file(server, "cpu", cid, "cpu.shares") == "2048"
    r = await c.put("/containers/put/limits/pids", json={"max": 7})
    assert r.json() == {"max": 7}
    assert cgroup_file(server, "pids", cid, "pids.max") == "7"
    r = await c.put("/containers/put/limits/pids", json={"max": 0})
    assert r.json() == {"max": 0}
    assert cgroup_file(server, "pids", cid, "pids.max") == "max"

    # Out of range: 400, nothing changes.
    for kind, body in (
        ("cpu", {"limit_in_shares": 1}),
        ("memory", {"limit_in_bytes": 1000}),
        ("pids", {"max": -1}),
        ("memory", {"limit_in_bytes": "lots"}),
    ):
        r = await c.put(f"/containers/put/limits/{kind}", json=body)
        assert r.status_code == 400, (kind, body, r.text)
    assert cgroup_file(server, "cpu", cid, "cpu.shares") == "2048"
    r = await c.put("/containers/nope/limits/memory", json={"limit_in_bytes": 64 * MiB})
    assert r.status_code == 404


async def test_memory_lowered_below_use_is_a_conflict(server: Server) -> None:
    c = server.client
    cid = cid_of(await create(server, "busy", privileged=True))
    # 24 MiB of anonymous memory held by a sleeping process (no swap on these machines).
    detached(server, cid, "sh", "-c", "x=$(head -c 25165824 /dev/zero | tr '\\0' a); sleep 1000")
    with trio.fail_after(15):
        while int(cgroup_file(server, "memory", cid, "memory.usage_in_bytes")) < 24 * MiB:
            await trio.sleep(0.02)
    r = await c.put("/containers/busy/limits/memory", json={"limit_in_bytes": 8 * MiB})
    assert r.status_code == 409, r.text
    assert r.json()["type"] == "ConflictError"
    assert (await c.get("/containers/busy/limits/memory")).json() == {"limit_in_bytes": 0}


async def test_going_over_the_memory_limit_stops_the_container(server: Server) -> None:
    info = await create(server, "oom", limits={"memory": {"limit_in_bytes": 32 * MiB}})
    cid = cid_of(info)
    detached(server, cid, "sleep", "1000")
    hog = sh(server, cid, "x=a; while :; do x=$x$x; done")
    assert hog.returncode == 137  # SIGKILLed by the OOM killer
    info = await wait_until_stopped(server, "oom")
    assert info["events"] == ["oom"]
    # Every process is gone but the init, which keeps the container's files readable.
    pids = detect().pids(f"{server.config.cgroup_parent}/{cid}")
    assert len(pids) == 1
    assert Path(f"/proc/{pids[0]}/cmdline").read_bytes().startswith(b"/.catatonit")
    log = Path(server.config.state_dir, "events.log").read_text()
    assert '"type":"ContainerStopped","handle":"oom","reason":"oom"' in log


async def test_fork_loop_stops_at_pids_max(server: Server) -> None:
    info = await create(server, "forky", limits={"pids": {"max": 12}})
    cid = cid_of(info)
    out = sh(server, cid, "for i in $(seq 40); do sleep 30 >/dev/null 2>&1 & done")
    assert "can't fork" in out.stderr or "Resource temporarily unavailable" in out.stderr, out
    pids = detect().pids(f"{server.config.cgroup_parent}/{cid}")
    assert len(pids) <= 12
    stat = (await server.client.get("/containers/forky/metrics")).json()["pids_stat"]
    assert stat["max"] == 12
    assert stat["max_reached"] > 0


async def test_disk_byte_limit_is_hard_and_disk_stat_follows(server: Server) -> None:
    c = server.client
    info = await create(server, "disk", limits={"disk": {"byte_hard": 8 * MiB}})
    cid = cid_of(info)
    assert info["disk_stat"] == {"bytes_used": 0, "inodes_used": 0}
    ok = sh(server, cid, "dd if=/dev/zero of=/four bs=1M count=4 && sync")
    assert ok.returncode == 0, ok.stderr
    stat = (await c.get("/containers/disk/metrics")).json()["disk_stat"]
    assert 4 * MiB <= stat["bytes_used"] <= 4 * MiB + 64 * 1024
    assert stat["inodes_used"] == 1
    full = sh(server, cid, "dd if=/dev/zero of=/more bs=1M count=8")
    assert full.returncode != 0
    assert "No space left on device" in full.stderr
    stat = (await c.get("/containers/disk/metrics")).json()["disk_stat"]
    assert 7 * MiB < stat["bytes_used"] <= 8 * MiB

    # Lower below use: 409; lower above use and raise: answered, and in force at once.
    r = await c.put("/containers/disk/limits/disk", json={"byte_hard": 2 * MiB})
    assert r.status_code == 409, r.text
    assert r.json()["type"] == "ConflictError"
    assert sh(server, cid, "rm /more").returncode == 0
    r = await c.put("/containers/disk/limits/disk", json={"block_hard": 5 * 1024})
    assert r.status_code == 200, r.text
    assert r.json()["block_hard"] == 5 * 1024
    assert r.json()["byte_hard"] == 0
    assert sh(server, cid, "dd if=/dev/zero of=/x bs=1M count=2").returncode != 0
    assert sh(server, cid, "rm /x").returncode == 0
    r = await c.put("/containers/disk/limits/disk", json={"byte_hard": 32 * MiB})
    assert r.status_code == 200, r.text
    assert sh(server, cid, "dd if=/dev/zero of=/y bs=1M count=20").returncode == 0
    assert (await c.put("/containers/disk/limits/disk", json={})).json()["byte_hard"] == 32 * MiB
    # Removing a hard limit that made the container's own filesystem is refused.
    r = await c.put("/containers/disk/limits/disk", json={"byte_hard": 0})
    assert r.status_code == 409


async def test_disk_inode_limit(server: Server) -> None:
    info = await create(server, "inodes", limits={"disk": {"inode_hard": 100}})
    cid = cid_of(info)
    out = sh(server, cid, "i=0; while touch /f.$i 2>/dev/null; do i=$((i+1)); done; echo $i")
    assert out.stdout.strip() == "100", out
    stat = (await server.client.get("/containers/inodes/metrics")).json()["disk_stat"]
    assert stat["inodes_used"] == 100
    r = await server.client.put("/containers/inodes/limits/disk", json={"inode_hard": 50})
    assert r.status_code == 409
    assert sh(server, cid, "rm /f.*").returncode == 0
    r = await server.client.put("/containers/inodes/limits/disk", json={"inode_hard": 10})
    assert r.status_code == 200, r.text
    out = sh(server, cid, "i=0; while touch /g.$i 2>/dev/null; do i=$((i+1)); done; echo $i")
    assert out.stdout.strip() == "10", out


async def test_disk_limit_needs_one_at_create(server: Server) -> None:
    c = server.client
    await create(server, "plain")
    r = await c.put("/containers/plain/limits/disk", json={"byte_hard": 8 * MiB})
    assert r.status_code == 409
    assert "created with limits.disk" in r.json()["message"]
    # Soft limits need no filesystem of their own: recorded and answered.
    r = await c.put("/containers/plain/limits/disk", json={"byte_soft": 8 * MiB})
    assert r.status_code == 200, r.text
    assert r.json()["byte_soft"] == 8 * MiB


async def test_unprivileged_container_writes_into_its_limited_layer(server: Server) -> None:
    info = await create(server, "unpriv", limits={"disk": {"byte_hard": 4 * MiB}})
    cid = cid_of(info)
    out = sh(server, cid, "id -u; echo hi > /etc/hello && cat /etc/hello")
    assert out.stdout.split() == ["0", "hi"], out.stderr
    assert sh(server, cid, "dd if=/dev/zero of=/big bs=1M count=8").returncode != 0
    upper = Path(info["container_path"], "layer", "upper")
    assert upper.stat().st_uid == server.config.uid_base


async def test_metrics_bulk_info_and_prometheus(server: Server) -> None:
    c = server.client
    await create(server, "m1", limits={"memory": {"limit_in_bytes": 64 * MiB}})
    r = await c.get("/containers/bulk_info", params={"handles": "m1,missing"})
    assert r.status_code == 200
    body = r.json()
    assert body["m1"]["info"]["state"] == "active"
    assert body["m1"]["info"]["memory_stat"]["limit_in_bytes"] == 64 * MiB
    assert body["missing"]["error"]["type"] == "ContainerNotFoundError"
    r = await c.get("/containers/bulk_metrics", params={"handles": "m1"})
    assert r.json()["m1"]["metrics"]["cpu_stat"]["usage"] > 0
    r = await c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'garden_container_memory_limit_bytes{handle="m1"} 67108864' in text
    assert 'garden_container_pids_current{handle="m1"} 1' in text
    assert 'garden_containers{phase="active"} 1' in text
    assert 'route="/containers/bulk_info",status="200"' in text
    assert "garden_event_log_records_total" in text
    assert 'garden_http_request_duration_seconds_bucket{method="POST",route="/containers"' in text
