"""The state dir's filesystem runs full: every request that must write there (a create's
bundle, a process's files, an event that does not fit) fails with 507 InsufficientStorageError
and changes nothing, the event log stays whole (no torn record; a restart replays it), and
everything works again once space is freed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from garden.events.log import EventLog
from tests.integration.conftest import leftovers, needs_root
from tests.integration.exhaustion.helpers import fill, server_on_tmpfs

pytestmark = pytest.mark.root

# Larger than a page: appending its event needs a block the full tmpfs does not have.
BIG = "v" * 9000


def expect_507(r: httpx.Response) -> None:
    assert r.status_code == 507, r.text
    assert r.json()["type"] == "InsufficientStorageError", r.text


def test_state_dir_disk_full_answers_507_and_recovers(state_dir: Path) -> None:
    needs_root()
    with server_on_tmpfs(state_dir.parent) as sp:
        sp.start()
        with httpx.Client(base_url=sp.url, timeout=60) as c:
            r = c.post("/containers", json={"handle": "before"})
            assert r.status_code == 200, r.text
            seq_before = c.get("/events").text.count("\n")
            filler = fill(sp.state_dir)

            expect_507(c.post("/containers", json={"handle": "full"}))
            assert c.get("/containers").json()["handles"] == ["before"]
            expect_507(c.post("/containers/before/processes", json={"path": "true"}))
            assert c.get("/containers/before/info").json()["process_ids"] == []
            # The event does not fit: not recorded, so not in force.
            expect_507(c.put("/containers/before/properties/big", json={"value": BIG}))
            assert c.get("/containers/before/properties/big").status_code == 404

            filler.unlink()
            r = c.put("/containers/before/properties/big", json={"value": BIG})
            assert r.status_code == 200, r.text
            r = c.post("/containers", json={"handle": "after"})
            assert r.status_code == 200, r.text
            r = c.post("/containers/after/processes", json={"path": "echo", "args": ["ok"]})
            assert r.status_code == 200 and '"exit_status":0' in r.text, r.text
            assert c.get("/events").text.count("\n") > seq_before
        sp.kill(15)
        log = EventLog.open(sp.state_dir / "events.log", readonly=True)
        assert log.torn is None
        log.close()
        sp.start()  # replays the log the failed appends were cut back from
        with httpx.Client(base_url=sp.url, timeout=60) as c:
            assert sorted(c.get("/containers").json()["handles"]) == ["after", "before"]
            assert c.get("/containers/before/properties/big").json() == {"value": BIG}
            for handle in ("after", "before"):
                assert c.delete(f"/containers/{handle}").status_code == 200
        assert leftovers(sp.config) == []
        sp.kill(15)
