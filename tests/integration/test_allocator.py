"""A real `garden server` process runs with jemalloc when the library is installed, keeps it
out of what runs in containers, and starts on glibc (saying why) when it is missing or not
wanted (garden/allocator.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from garden.allocator import find_jemalloc
from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.root


def mapped_jemalloc(pid: int) -> bool:
    return "libjemalloc" in Path(f"/proc/{pid}/maps").read_text()


def run_env(url: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/containers", json={"handle": "alloc"})
        assert r.status_code == 200, r.text
        out = ""
        with c.stream("POST", "/containers/alloc/processes", json={"path": "env"}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                payload = json.loads(line)
                out += payload.get("data", "")
                if "exit_status" in payload:
                    assert payload["exit_status"] == 0, out
        assert c.delete("/containers/alloc").status_code == 200
    return out


@pytest.mark.skipif(
    find_jemalloc() is None, reason="libjemalloc2 is not installed (scripts/setup.sh installs it)"
)
def test_server_runs_with_jemalloc_and_containers_do_not_inherit_it(
    server_process: ServerProcess,
) -> None:
    sp = server_process
    sp.start()
    assert sp.proc is not None
    assert mapped_jemalloc(sp.proc.pid)  # the pid the test started: re-exec'd in place
    assert "allocator name=jemalloc" in sp.log.read_text()
    env = run_env(sp.url)
    assert "PATH=" in env
    for name in ("LD_PRELOAD", "MALLOC_CONF", "GARDEN_MALLOC"):
        assert name not in env


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--jemalloc-path", "/nonexistent/libjemalloc.so.2"], "WARNING garden.allocator "
         "allocator name=glibc reason=jemalloc-not-found looked=/nonexistent/libjemalloc.so.2"),
        (["--malloc", "glibc"], "INFO garden.allocator allocator name=glibc reason=--malloc-glibc"),
    ],
)  # fmt: skip
def test_server_starts_on_glibc_without_jemalloc(
    server_process: ServerProcess, args: list[str], says: str
) -> None:
    sp = server_process
    sp.extra_args = args
    sp.start()
    assert sp.proc is not None
    assert not mapped_jemalloc(sp.proc.pid)
    assert says in sp.log.read_text()
    assert "PATH=" in run_env(sp.url)
