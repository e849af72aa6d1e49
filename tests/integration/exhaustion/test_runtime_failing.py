"""The OCI runtime binary fails or disappears while the server runs: creates answer 500 with
the runtime's own message and leave nothing behind, the server stays up, and once the binary
works again creates, runs and destroys succeed."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from tests.integration.conftest import ServerProcess, leftovers

pytestmark = pytest.mark.root

WRAPPER = """#!/bin/sh
if [ -e "{fail}" ]; then echo "runtime broken on purpose" >&2; exit 1; fi
exec {real} "$@"
"""


def test_runtime_failing_or_missing_then_back(
    server_process: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    sp = server_process
    real = shutil.which("runc")
    assert real is not None
    bin_dir = sp.state_dir.parent / "bin"
    bin_dir.mkdir()
    wrapper, fail = bin_dir / "runc", bin_dir / "fail"
    wrapper.write_text(WRAPPER.format(fail=fail, real=real))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    sp.extra_args = ["--runtime", "runc"]
    sp.start()
    containers = sp.state_dir / "containers"
    with httpx.Client(base_url=sp.url, timeout=60) as c:
        assert c.post("/containers", json={"handle": "a"}).status_code == 200

        fail.touch()  # the runtime now fails every call
        r = c.post("/containers", json={"handle": "b"})
        assert r.status_code == 500, r.text
        assert "runtime broken on purpose" in r.json()["message"], r.text
        assert c.get("/containers").json()["handles"] == ["a"]
        r = c.post("/containers/a/processes", json={"path": "echo", "args": ["hi"]})
        assert r.status_code == 500, r.text
        assert c.get("/containers/a/info").json()["process_ids"] == []

        saved = bin_dir / "runc.saved"
        wrapper.rename(saved)  # now missing altogether
        r = c.post("/containers", json={"handle": "b"})
        assert r.status_code == 500, r.text
        assert c.get("/ping").status_code == 200

        saved.rename(wrapper)
        fail.unlink()
        assert c.post("/containers", json={"handle": "b"}).status_code == 200
        r = c.post("/containers/a/processes", json={"path": "echo", "args": ["hi"]})
        assert r.status_code == 200 and '"exit_status":0' in r.text, r.text
        assert sorted(p.name for p in containers.iterdir()) == sorted(
            c.get(f"/containers/{h}/info").json()["container_path"].rsplit("/", 1)[1]
            for h in ("a", "b")
        )
        for handle in ("a", "b"):
            assert c.delete(f"/containers/{handle}").status_code == 200
    assert leftovers(sp.config) == []
