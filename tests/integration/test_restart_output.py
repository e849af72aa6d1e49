"""Process output across a SIGKILL of a real `garden server`: a passthrough process keeps its
bytes and its order index (output written while the server is down comes in whole), and a
k8s-file process started by a server before the upgrade still reads after it."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ServerProcess, leftovers

pytestmark = pytest.mark.root


def create(c: httpx.Client, handle: str, gate: Path) -> None:
    spec = {
        "handle": handle,
        "privileged": True,
        "bind_mounts": [{"src_path": str(gate), "dst_path": "/gate"}],
    }
    r = c.post("/containers", json=spec)
    assert r.status_code == 200, r.text


def wait_gate(name: str) -> str:
    return f"while [ ! -e /gate/{name} ]; do usleep 5000; done"


def runs(payloads: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(source, data) in order, consecutive data of one stream merged."""
    out: list[tuple[str, str]] = []
    for p in payloads:
        if "source" not in p:
            continue
        if out and out[-1][0] == p["source"]:
            out[-1] = (p["source"], out[-1][1] + p["data"])
        else:
            out.append((p["source"], p["data"]))
    return out


def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for what the process does while no server runs to announce it."""
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def process_dir(sp: ServerProcess, process_id: str) -> Path:
    (found,) = sp.state_dir.glob(f"containers/*/processes/{process_id}")
    return found


def read_until(lines: Iterator[str], want: list[tuple[str, str]]) -> list[dict[str, Any]]:
    payloads: list[dict[str, Any]] = []
    while runs(payloads) != want:
        payloads.append(json.loads(next(lines)))
        assert len(payloads) < 20, payloads
    return payloads


def test_passthrough_output_and_order_survive_a_server_kill(
    server_process: ServerProcess, state_dir: Path
) -> None:
    sp = server_process
    gate = state_dir.parent / "gate"
    gate.mkdir()
    sp.start()
    script = (
        f"echo o1; echo e1 >&2; {wait_gate('a')}; echo o2; echo e2 >&2; {wait_gate('b')}; "
        "echo o3; exit 5"
    )
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        create(c, "out", gate)
        spec = {"path": "sh", "args": ["-c", script], "id": "p"}
        with c.stream("POST", "/containers/out/processes", json=spec) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines)) == {"process_id": "p"}
            read_until(lines, [("stdout", "o1\n"), ("stderr", "e1\n")])
    pdir = process_dir(sp, "p")
    assert (pdir / "order").exists() and not (pdir / "log").exists()
    sp.kill()
    (gate / "a").touch()  # o2, e2 are written while no server runs
    until(lambda: (pdir / "stderr").stat().st_size == 6)
    sp.start()
    # While the server was down e1 was the stream being written: the gap is e1 e2, then o2.
    want = [("stdout", "o1\n"), ("stderr", "e1\ne2\n"), ("stdout", "o2\n")]
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        with c.stream("GET", "/containers/out/processes/p") as r:
            lines = r.iter_lines()
            assert json.loads(next(lines)) == {"process_id": "p"}
            payloads = read_until(lines, want)
            (gate / "b").touch()  # live again
            payloads += [json.loads(line) for line in lines if line]
        want[-1] = ("stdout", "o2\no3\n")
        assert runs(payloads) == want
        assert payloads[-1] == {"process_id": "p", "exit_status": 5}
        with c.stream("GET", "/containers/out/processes/p?encoding=base64") as r:
            again = [json.loads(line) for line in r.iter_lines() if line]
        assert len(runs(again)) == 3 and again[-1]["exit_status"] == 5
        assert c.delete("/containers/out").status_code == 200
    events = (sp.state_dir / "events.log").read_text()
    assert '"log_format":"passthrough"' in events
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def test_a_k8s_file_process_reads_after_the_upgrade(
    server_process: ServerProcess, state_dir: Path
) -> None:
    """A process started under --process-output k8s-file (as every process was before
    passthrough) runs on through a SIGKILL and a start with passthrough, and reads whole."""
    sp = server_process
    gate = state_dir.parent / "gate"
    gate.mkdir()
    sp.extra_args = ["--process-output", "k8s-file"]
    sp.start()
    script = f"echo before; echo err >&2; {wait_gate('go')}; echo after; exit 4"
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        create(c, "old", gate)
        spec = {"path": "sh", "args": ["-c", script], "id": "k"}
        with c.stream("POST", "/containers/old/processes", json=spec) as r:
            lines = r.iter_lines()
            next(lines)
            read_until(lines, [("stdout", "before\n"), ("stderr", "err\n")])
    pdir = process_dir(sp, "k")
    assert (pdir / "log").exists() and not (pdir / "stdout").exists()
    sp.kill()
    sp.extra_args = []  # the upgraded server: passthrough by default
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        (gate / "go").touch()
        with c.stream("GET", "/containers/old/processes/k") as r:
            payloads = [json.loads(line) for line in r.iter_lines() if line]
        assert runs(payloads) == [
            ("stdout", "before\n"),
            ("stderr", "err\n"),
            ("stdout", "after\n"),
        ]
        assert payloads[-1]["exit_status"] == 4
        # New processes of the same container are passthrough now.
        spec = {"path": "sh", "args": ["-c", "echo new; echo new-err >&2"], "id": "n"}
        with c.stream("POST", "/containers/old/processes", json=spec) as r:
            payloads = [json.loads(line) for line in r.iter_lines() if line]
        assert runs(payloads) == [("stdout", "new\n"), ("stderr", "new-err\n")]
        assert (process_dir(sp, "n") / "stdout").exists()
        assert c.delete("/containers/old").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []
