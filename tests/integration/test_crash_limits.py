"""Crashes in the middle of a limit change (GARDEN_CRASH_AT, garden/faults.py): the kernel
changed, the log did not. The client got no answer, so the change was never in force: after a
restart the log's limit is what the API answers and what the kernel holds again
(`ContainerKernel.reconcile_limits`, the networker's `restore`), and nothing leaks."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from garden.linux.net import names
from tests.integration.conftest import ServerProcess, leftovers

pytestmark = pytest.mark.root

TIMEOUT = httpx.Timeout(30)
MiB = 1 << 20
CGROUP = Path("/sys/fs/cgroup")

# kind: (limits at create, the PUT body that crashes, the cgroup file and its value before)
CGROUP_CASES: dict[str, tuple[dict[str, Any], dict[str, Any], str, str]] = {
    "memory": (
        {"memory": {"limit_in_bytes": 64 * MiB}},
        {"limit_in_bytes": 32 * MiB},
        "memory/{cg}/memory.limit_in_bytes",
        str(64 * MiB),
    ),
    "memory-unset": ({}, {"limit_in_bytes": 32 * MiB}, "memory/{cg}/memory.limit_in_bytes", ""),
    "cpu": (
        {"cpu": {"limit_in_shares": 300}},
        {"limit_in_shares": 700},
        "cpu/{cg}/cpu.shares",
        "300",
    ),
    "cpu-unset": ({}, {"limit_in_shares": 700}, "cpu/{cg}/cpu.shares", "1024"),
    "pids": ({"pids": {"max": 30}}, {"max": 60}, "pids/{cg}/pids.max", "30"),
    "pids-unset": ({}, {"max": 60}, "pids/{cg}/pids.max", "max"),
}


def _cgroup_path(sp: ServerProcess, container_path: str) -> str:
    return f"{sp.config.cgroup_parent.strip('/')}/{Path(container_path).name}"


def crash_during(
    sp: ServerProcess, point: str, create: dict[str, Any], put: tuple[str, Any]
) -> None:
    sp.start(crash_at=point)
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        r = c.post("/containers", json={"handle": "victim", **create})
        assert r.status_code == 200, r.text
        with pytest.raises(httpx.TransportError):
            c.put(f"/containers/victim/limits/{put[0]}", json=put[1])
    assert sp.wait_crashed() == -signal.SIGKILL
    sp.start()


def finish(sp: ServerProcess) -> None:
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        for handle in c.get("/containers").json()["handles"]:
            assert c.delete(f"/containers/{handle}").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


@pytest.mark.parametrize("case", sorted(CGROUP_CASES))
def test_crash_after_cgroup_limit_restores_logged_limit(
    server_process: ServerProcess, case: str
) -> None:
    sp = server_process
    create, put, file, before = CGROUP_CASES[case]
    kind = case.split("-")[0]
    limits = {"limits": create} if create else {}
    crash_during(sp, "limits:after-cgroup", limits, (kind, put))
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        answer = c.get(f"/containers/victim/limits/{kind}").json()
        cg = _cgroup_path(sp, c.get("/containers/victim/info").json()["container_path"])
        held = (CGROUP / file.format(cg=cg)).read_text().strip()
        if kind == "memory" and not before:
            assert int(held) >= 1 << 60  # no limit: the kernel's huge default
            assert answer["limit_in_bytes"] == 0
        else:
            assert held == before
            if kind == "memory":
                assert answer["limit_in_bytes"] == int(before)
    finish(sp)


def test_crash_after_disk_limit_restores_logged_quota(server_process: ServerProcess) -> None:
    sp = server_process
    create = {"limits": {"disk": {"byte_hard": 32 * MiB}}}
    crash_during(sp, "limits:after-disk", create, ("disk", {"byte_hard": 8 * MiB}))
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert c.get("/containers/victim/limits/disk").json()["byte_hard"] == 32 * MiB
        # 16 MiB fit under the logged 32 MiB, never under the 8 MiB the crash left.
        spec = {
            "user": "root",
            "path": "dd",
            "args": ["if=/dev/zero", "of=/f", "bs=1M", "count=16"],
        }
        with c.stream("POST", "/containers/victim/processes", json=spec) as r:
            assert r.status_code == 200
            payloads = [json.loads(line) for line in r.iter_lines() if line]
        assert payloads[-1].get("exit_status") == 0, payloads[-3:]
    finish(sp)


def qdiscs(tag: str, ip: str) -> str:
    dev = names.link_name(tag, names.HOST_VETH, ip)
    out = subprocess.run(["tc", "qdisc", "show", "dev", dev], capture_output=True, text=True)
    return out.stdout


@pytest.mark.parametrize(
    ("put", "rate"),
    [({"rate": 4 * MiB, "burst": 65536}, "8388Kbit"), ({"rate": 0, "burst": 0}, "8388Kbit")],
    ids=["limit-to-other-limit", "limit-to-none"],
)
def test_crash_after_bandwidth_change_restores_logged_limit(
    server_process: ServerProcess, put: dict[str, int], rate: str
) -> None:
    sp = server_process
    create = {"limits": {"bandwidth": {"rate": MiB, "burst": 65536}}}
    crash_during(sp, "net:after-limit", create, ("bandwidth", put))
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert c.get("/containers/victim/limits/bandwidth").json()["rate"] == MiB
        ip = c.get("/containers/victim/info").json()["container_ip"]
        shown = qdiscs(sp.tag, ip)
        assert "tbf" in shown and f"rate {rate}" in shown and "ingress" in shown, shown
    finish(sp)
