"""A real `garden server` process killed with SIGKILL (or stopped with SIGTERM) and started again
keeps its containers, their properties and their kernel resources; what the crash interrupted
is finished, and what has no owner is swept."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from garden.linux.cgroups import detect
from tests.integration.conftest import ServerProcess, leftovers

pytestmark = pytest.mark.root


def create(c: httpx.Client, handle: str, **spec: object) -> None:
    r = c.post("/containers", json={"handle": handle, **spec})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_restart_keeps_containers(server_process: ServerProcess, sig: int) -> None:
    sp = server_process
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        create(c, "keep", properties={"owner": "ci"})
        create(c, "priv", privileged=True)
        create(c, "gone")
        assert c.put("/containers/keep/properties/extra", json={"value": "1"}).status_code == 200
        assert c.delete("/containers/gone").status_code == 200
        before = {h: c.get(f"/containers/{h}/info").json() for h in ("keep", "priv")}
    rc = sp.kill(sig)
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    # The containers outlive the server.
    cg = detect()
    for info in before.values():
        assert cg.pids(f"{sp.config.cgroup_parent}/{Path(info['container_path']).name}")
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        assert sorted(c.get("/containers").json()["handles"]) == ["keep", "priv"]
        for handle, info in before.items():
            now = c.get(f"/containers/{handle}/info").json()
            assert now["state"] == "active"
            assert now["properties"] == info["properties"]
            assert now["container_path"] == info["container_path"]
        assert c.get("/containers/keep/properties/extra").json() == {"value": "1"}
        assert c.post("/containers", json={"handle": "keep"}).status_code == 409
        for handle in ("keep", "priv"):
            assert c.delete(f"/containers/{handle}").status_code == 200
        assert c.get("/containers").json() == {"handles": []}
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def test_container_whose_init_died_while_down_is_reported_stopped(
    server_process: ServerProcess,
) -> None:
    sp = server_process
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        create(c, "victim", privileged=True)
        info = c.get("/containers/victim/info").json()
    sp.kill()
    cgroup = f"{sp.config.cgroup_parent}/{Path(info['container_path']).name}"
    import os

    for pid in detect().pids(cgroup):
        os.kill(pid, signal.SIGKILL)
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        assert c.get("/containers").json()["handles"] == ["victim"]
        assert c.get("/containers/victim/info").json()["state"] == "stopped"
        assert c.delete("/containers/victim").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def test_orphans_with_our_marks_are_swept_at_start(server_process: ServerProcess) -> None:
    """Kernel resources under our tag that the log does not know (e.g. a create whose intent
    record never reached the disk) are released at start-up."""
    sp = server_process
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        create(c, "orphan", privileged=True)
    sp.kill()
    # Forget the container: a log without its records, as if they were never written.
    log = sp.state_dir / "events.log"
    kept = [line for line in log.read_bytes().splitlines(keepends=True) if b'"orphan"' not in line]
    log.write_bytes(b"".join(_renumber(kept)))
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        assert c.get("/containers").json() == {"handles": []}
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def _renumber(lines: list[bytes]) -> list[bytes]:
    """Rewrite sequence numbers and checksums after dropping lines (test-only surgery)."""
    import zlib

    import msgspec

    out = []
    for seq, line in enumerate(lines, start=1):
        raw = msgspec.json.decode(line.split(b" ", 1)[1])
        raw["seq"] = seq
        body = msgspec.json.encode(raw)
        out.append(b"%08x %s\n" % (zlib.crc32(body), body))
    return out


def test_processes_survive_a_server_crash(server_process: ServerProcess, state_dir: Path) -> None:
    """A process that runs on and one that exits while the server is down: after a restart the
    first is attachable with all its output, the second reports its real exit status."""
    import json

    sp = server_process
    gate = state_dir.parent / "gate"
    gate.mkdir()
    sp.start()
    wait_for_gate = "echo before; while [ ! -e /gate/open ]; do sleep 0.05; done; echo after"
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        create(
            c,
            "crash",
            privileged=True,
            bind_mounts=[{"src_path": str(gate), "dst_path": "/gate"}],
        )
        ids = {}
        for name, code in (("exits", 3), ("runs", 0)):
            script = wait_for_gate + (f"; exit {code}" if name == "exits" else "; read x; echo $x")
            spec = {"path": "sh", "args": ["-c", script], "id": name, "stdin": name == "runs"}
            with c.stream("POST", "/containers/crash/processes", json=spec) as r:
                lines = r.iter_lines()
                ids[name] = json.loads(next(lines))["process_id"]
                assert json.loads(next(lines))["data"] == "before\n"
    sp.kill()
    (gate / "open").touch()
    # Wait, bounded, for the conmon of "exits" to write its exit file while the server is down.
    exit_files = list(sp.state_dir.glob("containers/*/processes/exits/exit/*"))
    deadline = 200
    while not exit_files and deadline:
        import time

        time.sleep(0.05)
        deadline -= 1
        exit_files = list(sp.state_dir.glob("containers/*/processes/exits/exit/*"))
    assert exit_files, "the process did not exit while the server was down"
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        with c.stream("GET", "/containers/crash/processes/exits") as r:
            payloads = [json.loads(line) for line in r.iter_lines() if line]
        assert "".join(p.get("data", "") for p in payloads) == "before\nafter\n"
        assert payloads[-1]["exit_status"] == 3
        assert c.get("/containers/crash/info").json()["process_ids"] == ["runs"]
        r = c.put("/containers/crash/processes/runs/stdin", content=b"still here\n")
        # stdin of a process started before the crash: conmon's attach socket is still there
        assert r.status_code == 200, r.text
        with c.stream("GET", "/containers/crash/processes/runs") as r:
            payloads = [json.loads(line) for line in r.iter_lines() if line]
        assert "".join(p.get("data", "") for p in payloads) == "before\nafter\nstill here\n"
        assert payloads[-1]["exit_status"] == 0
        assert c.delete("/containers/crash").status_code == 200
    events = (sp.state_dir / "events.log").read_text()
    assert events.count('"type":"ProcessStarted"') == 2
    assert events.count('"type":"ProcessExited"') == 2
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def _has_table(tag: str) -> bool:
    from garden.linux.net.nft import table_name

    listed = subprocess.run(
        ["nft", "list", "table", "ip", table_name(tag)], capture_output=True, check=False
    )
    return listed.returncode == 0


def test_clean_stop_with_no_containers_removes_the_parent_cgroups_and_table(
    server_process: ServerProcess,
) -> None:
    """Regression: a server stopped with SIGTERM after its last destroy left its empty
    per-tag parent cgroup in every hierarchy and its nft table; one stopped with containers
    keeps both for them."""
    sp = server_process
    cg = detect()
    parent = sp.config.cgroup_parent
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        create(c, "stays")
        assert cg.exists(parent) and _has_table(sp.tag)
    assert sp.kill(signal.SIGTERM) == 0
    assert cg.exists(parent), "the parent of a live container was removed"
    assert _has_table(sp.tag), "the table of a live container was removed"
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        assert c.delete("/containers/stays").status_code == 200
    assert sp.kill(signal.SIGTERM) == 0
    assert not cg.exists(parent), f"{parent} left behind after a clean stop"
    assert not _has_table(sp.tag), "the nft table left behind after a clean stop"
