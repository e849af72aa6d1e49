"""The crash-test harness: a real server SIGKILLs itself at a chosen point of an operation
(GARDEN_CRASH_AT, garden/faults.py); after a restart every container is either fully there and
usable or fully gone, nothing is listed but broken, no handle is lost, and nothing leaks."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from tests.integration.conftest import ServerProcess, leftovers, trash_left

pytestmark = pytest.mark.root

TIMEOUT = httpx.Timeout(30)


def create(c: httpx.Client, handle: str) -> httpx.Response:
    return c.post("/containers", json={"handle": handle, "properties": {"p": "1"}})


def run_true(
    c: httpx.Client, handle: str, process_id: str | None = None
) -> list[dict[str, object]]:
    spec: dict[str, object] = {"path": "true"}
    if process_id:
        spec["id"] = process_id
    with c.stream("POST", f"/containers/{handle}/processes", json=spec) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line) for line in r.iter_lines() if line]


def op_create(c: httpx.Client) -> None:
    create(c, "victim")


def op_destroy(c: httpx.Client) -> None:
    assert create(c, "victim").status_code == 200
    c.delete("/containers/victim")


def op_property(c: httpx.Client) -> None:
    assert create(c, "victim").status_code == 200
    c.put("/containers/victim/properties/k", json={"value": "v"})


def op_property_delete(c: httpx.Client) -> None:
    assert create(c, "victim").status_code == 200
    assert c.put("/containers/victim/properties/k", json={"value": "v"}).status_code == 200
    c.delete("/containers/victim/properties/k")


def op_grace_time(c: httpx.Client) -> None:
    assert create(c, "victim").status_code == 200
    c.put("/containers/victim/grace_time", json={"grace_time": 3600})


def op_run(c: httpx.Client) -> None:
    assert create(c, "victim").status_code == 200
    run_true(c, "victim", "proc")


def op_stop(c: httpx.Client) -> None:
    assert create(c, "victim").status_code == 200
    c.put("/containers/victim/stop", json={"kill": True})


# (crash point, operation, is the container there afterwards?)
CASES: list[tuple[str, Callable[[httpx.Client], None], bool]] = [
    # "#2": the bystander's create passes these points first.
    ("record:ContainerCreateStarted#2", op_create, False),
    ("create:after-overlay#2", op_create, False),
    ("create:after-runtime#2", op_create, False),
    ("record:ContainerCreated#2", op_create, True),
    ("record:ContainerDestroyStarted", op_destroy, False),
    ("destroy:after-runtime", op_destroy, False),
    ("destroy:after-unmount", op_destroy, False),
    ("destroy:after-trash", op_destroy, False),
    ("record:ContainerDestroyed", op_destroy, False),
    ("record:PropertySet", op_property, True),
    ("record:PropertyDeleted", op_property_delete, True),
    ("record:GraceTimeSet", op_grace_time, True),
    ("record:ProcessSpawning", op_run, True),
    ("process:after-spawn", op_run, True),
    ("record:ProcessStarted", op_run, True),
    ("record:ProcessExited", op_run, True),
    ("record:ContainerStopped", op_stop, True),
]


@pytest.mark.parametrize(("point", "operation", "survives"), CASES, ids=[c[0] for c in CASES])
def test_crash_at(
    server_process: ServerProcess,
    point: str,
    operation: Callable[[httpx.Client], None],
    survives: bool,
) -> None:
    sp = server_process
    sp.start(crash_at=point)
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert create(c, "bystander").status_code == 200
        with pytest.raises(httpx.TransportError):
            operation(c)
    assert sp.wait_crashed() == -signal.SIGKILL
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        handles = sorted(c.get("/containers").json()["handles"])
        assert handles == (["bystander", "victim"] if survives else ["bystander"])
        for handle in handles:
            info = c.get(f"/containers/{handle}/info").json()
            assert info["properties"]["p"] == "1"
            if info["state"] == "active":
                assert run_true(c, handle)[-1]["exit_status"] == 0
        if point == "record:PropertySet":
            assert c.get("/containers/victim/properties/k").json() == {"value": "v"}
        if point == "record:PropertyDeleted":
            assert c.get("/containers/victim/properties/k").status_code == 404
        if point == "record:GraceTimeSet":
            assert c.get("/containers/victim/info").json()["grace_time"] == 3600
        if point in ("record:ProcessSpawning", "record:ProcessStarted", "record:ProcessExited"):
            # After ProcessSpawning the start settles the spawn from the pid files.
            with c.stream("GET", "/containers/victim/processes/proc") as r:
                payloads = [json.loads(line) for line in r.iter_lines() if line]
            if point == "record:ProcessSpawning" and r.status_code == 404:
                # The id was never answered, and the runtime may not have run yet: the
                # monitor execs it through the dead server's sealed copy (/proc/<pid>/fd/N).
                # Then the spawn is settled as failed and its id is free again.
                assert payloads[-1]["type"] == "ProcessNotFoundError"
                assert run_true(c, "victim", "proc")[-1]["exit_status"] == 0
            else:
                assert payloads[-1] == {"process_id": "proc", "exit_status": 0}
        if point == "process:after-spawn":
            # Settled from its pid files if its announcement was durable, else swept: its id
            # is free again either way (the process has exited).
            assert run_true(c, "victim", "proc")[-1]["exit_status"] == 0
        if point == "record:ContainerStopped":
            assert c.get("/containers/victim/info").json()["state"] == "stopped"
        if not survives:
            assert create(c, "victim").status_code == 200
        for handle in c.get("/containers").json()["handles"]:
            assert c.delete(f"/containers/{handle}").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def test_crash_between_trash_rename_and_delete_next_start_deletes_bundle(
    server_process: ServerProcess,
) -> None:
    """The destroy moved the bundle into `<state>/trash` (and may have answered); the server
    died before deleting it: the next start deletes it, and the container stays gone."""
    sp = server_process
    sp.start(crash_at="trash:before-delete")
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert create(c, "victim").status_code == 200
        try:
            assert c.delete("/containers/victim").status_code == 200
        except httpx.TransportError:
            pass  # killed before the answer went out: the intent was recorded all the same
    assert sp.wait_crashed() == -signal.SIGKILL
    trash = sp.state_dir / "trash"
    assert len(os.listdir(trash)) == 1  # renamed, not deleted
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert c.get("/containers").json()["handles"] == []
        assert c.get("/containers/victim/info").status_code == 404
    assert trash_left(sp.config, time.monotonic() + 10) == []
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []
