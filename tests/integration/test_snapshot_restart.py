"""A real `garden server` writes a snapshot when it stops and starts from it; a crash while
writing one leaves the previous state of affairs, and the next start replays the whole log."""

from __future__ import annotations

import signal

import httpx
import pytest

from garden.events.log import EventLog
from garden.events.snapshot import SNAPSHOT_FILE, read_snapshot
from tests.integration.conftest import ServerProcess, leftovers

pytestmark = pytest.mark.root

TIMEOUT = httpx.Timeout(30)


def last_seq(sp: ServerProcess) -> int:
    log = EventLog.open(sp.state_dir / "events.log", readonly=True)
    try:
        return log.last_seq
    finally:
        log.close()


def test_stop_writes_a_snapshot_and_the_next_start_uses_it(
    server_process: ServerProcess,
) -> None:
    sp = server_process
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert c.post("/containers", json={"handle": "snap"}).status_code == 200
        assert c.put("/containers/snap/properties/k", json={"value": "v"}).status_code == 200
    assert sp.kill(signal.SIGTERM) == 0
    snapshot = read_snapshot(sp.state_dir / SNAPSHOT_FILE)
    assert snapshot is not None and snapshot.position.seq == last_seq(sp)
    assert snapshot.containers["snap"].properties == {"k": "v"}

    sp.start()
    assert f"replayed records=0 snapshot_seq={snapshot.position.seq} " in sp.log.read_text()
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        info = c.get("/containers/snap/info").json()
        assert info["state"] == "active" and info["properties"] == {"k": "v"}
        assert c.delete("/containers/snap").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def test_crash_while_writing_the_snapshot(server_process: ServerProcess) -> None:
    sp = server_process
    sp.start(crash_at="snapshot:before-rename")
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert c.post("/containers", json={"handle": "snap"}).status_code == 200
    assert sp.kill(signal.SIGTERM) == -signal.SIGKILL, "died at the rename"
    assert not (sp.state_dir / SNAPSHOT_FILE).exists()
    assert (sp.state_dir / (SNAPSHOT_FILE + ".tmp")).exists()

    sp.start()
    assert sp.log.read_text().count("snapshot_seq=0 ") == 2, "both starts replayed everything"
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert c.get("/containers/snap/info").json()["state"] == "active"
        assert c.delete("/containers/snap").status_code == 200
    sp.kill(signal.SIGTERM)
    assert not (sp.state_dir / (SNAPSHOT_FILE + ".tmp")).exists()
    snapshot = read_snapshot(sp.state_dir / SNAPSHOT_FILE)
    assert snapshot is not None and snapshot.position.seq == last_seq(sp)
    assert leftovers(sp.config) == []
