"""The state dir's filesystem runs full: requests that must record a change fail with 507 and
change nothing, the event log stays whole (a restart replays it), and everything works again
once space is freed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from garden.events.log import EventLog
from tests.integration.conftest import leftovers, needs_root
from tests.integration.exhaustion.helpers import fill, server_on_tmpfs

pytestmark = pytest.mark.root


def test_disk_full_state_dir(state_dir: Path) -> None:
    needs_root()
    with server_on_tmpfs(state_dir.parent) as sp:
        sp.start()
        with httpx.Client(base_url=sp.url, timeout=60) as c:
            r = c.post("/containers", json={"handle": "before"})
            assert r.status_code == 200, r.text
            filler = fill(sp.state_dir)
            results = {}
            results["create"] = c.post("/containers", json={"handle": "full"})
            results["run"] = c.post("/containers/before/processes", json={"path": "true"})
            results["prop"] = c.put("/containers/before/properties/k", json={"value": "v"})
            results["upload"] = c.put(
                "/containers/before/files?destination=/tmp/x", content=b"x" * 100_000
            )
            results["destroy"] = c.delete("/containers/before")
            for k, r in results.items():
                print(k, r.status_code, r.text[:300])
            print(c.get("/containers").json())
            filler.unlink()
            r = c.post("/containers", json={"handle": "after"})
            print("after", r.status_code, r.text)
            for h in c.get("/containers").json()["handles"]:
                print("delete", h, c.delete(f"/containers/{h}").status_code)
        sp.kill(15)
        print(open(sp.log).read()[-5000:])
        sp.start()
        sp.kill(15)
        log = EventLog.open(sp.state_dir / "events.log", readonly=True)
        print(log.torn, log.last_seq)
        assert leftovers(sp.config) == []
    assert 0
