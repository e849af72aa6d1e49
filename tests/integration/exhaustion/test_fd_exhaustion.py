"""The server runs out of file descriptors (its RLIMIT_NOFILE lowered from outside with
prlimit): requests answer 503 ServiceUnavailableError, never 500, the accept loop neither spins
nor dies, and once descriptors are available again everything works, new connections too."""

from __future__ import annotations

import os
import resource
import socket
import time

import httpx
import pytest

from tests.integration.conftest import ServerProcess, leftovers

pytestmark = pytest.mark.root


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_answers_503_and_recovers(server_process: ServerProcess) -> None:
    sp = server_process
    sp.start()
    assert sp.proc is not None
    pid = sp.proc.pid
    with httpx.Client(base_url=sp.url, timeout=60) as c:
        assert c.post("/containers", json={"handle": "a"}).status_code == 200
        assert c.get("/ping").status_code == 200  # the connection the test keeps using
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use, hard))
        try:
            statuses = []
            for r in (
                c.post("/containers", json={"handle": "b"}),
                c.post("/containers/a/processes", json={"path": "echo", "args": ["hi"]}),
                c.put("/containers/a/files?destination=/tmp/f", content=b"data"),
            ):
                statuses.append(r.status_code)
                assert r.status_code == 503, r.text
                assert r.json()["type"] == "ServiceUnavailableError", r.text
                assert "file descriptors" in r.json()["message"], r.text
            # A new connection cannot be accepted now: it waits in the backlog while the
            # accept loop backs off (it must not spin on EMFILE).
            before = cpu_seconds(pid)
            waiting = socket.create_connection(("127.0.0.1", sp.port))
            time.sleep(2)  # the window in which a spinning loop would burn CPU
            assert cpu_seconds(pid) - before < 1.0
            assert sp.proc.poll() is None
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        # The waiting connection is served once the loop can accept again.
        waiting.settimeout(30)
        waiting.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert waiting.recv(100).startswith(b"HTTP/1.1 200")
        waiting.close()
        assert c.post("/containers", json={"handle": "b"}).status_code == 200
        r = c.post("/containers/a/processes", json={"path": "echo", "args": ["hi"]})
        assert r.status_code == 200 and '"exit_status":0' in r.text, r.text
        for handle in ("a", "b"):
            assert c.delete(f"/containers/{handle}").status_code == 200
    with httpx.Client(base_url=sp.url, timeout=10) as fresh:
        assert fresh.get("/ping").status_code == 200
    assert leftovers(sp.config) == []


def test_failed_create_undo_under_emfile_is_finished_by_the_next_create(
    server_process: ServerProcess,
) -> None:
    """Regression: a create failing for want of descriptors could not undo itself either
    (reading /proc/self/mountinfo needs one) and left its bundle dir until the next start."""
    sp = server_process
    sp.start()
    assert sp.proc is not None
    pid = sp.proc.pid
    containers = sp.state_dir / "containers"
    with httpx.Client(base_url=sp.url, timeout=60) as c:
        assert c.get("/ping").status_code == 200
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")), hard))
        try:
            assert c.post("/containers", json={"handle": "x"}).status_code == 503
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        assert c.post("/containers", json={"handle": "y"}).status_code == 200
        assert len(list(containers.iterdir())) == 1, "only y's bundle"
        assert c.delete("/containers/y").status_code == 200
    assert leftovers(sp.config) == []
