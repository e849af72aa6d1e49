"""Crashes in the middle of a file transfer (GARDEN_CRASH_AT, garden/faults.py): an upload cut
off mid-stream or before its file is named leaves the destination as it was (absent, or the old
content) and no temporary file; a download cut off is seen incomplete by its client; after the
restart the container is usable and nothing leaks."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ServerProcess, leftovers

pytestmark = pytest.mark.root

TIMEOUT = httpx.Timeout(30)
MiB = 1 << 20
BODY = bytes(range(256)) * (12 * MiB // 256)  # several 1 MiB blocks
OLD = b"the old content\n"


def files_url(handle: str, param: str, path: str) -> str:
    return f"/containers/{handle}/files?{param}={path}"


def upper_dir(c: httpx.Client, handle: str) -> Path:
    return Path(c.get(f"/containers/{handle}/info").json()["container_path"], "upper")


@pytest.mark.parametrize("point", ["files:in-mid-stream", "files:before-publish"])
@pytest.mark.parametrize("replace", [False, True], ids=["new", "replace"])
def test_crash_during_upload_leaves_destination_as_it_was(
    server_process: ServerProcess, point: str, replace: bool
) -> None:
    sp = server_process
    sp.start(crash_at=f"{point}#2" if replace else point)  # "#2": the old file passes first
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert c.post("/containers", json={"handle": "victim"}).status_code == 200
        if replace:
            r = c.put(files_url("victim", "destination", "/srv/data"), content=OLD)
            assert r.status_code == 200, r.text
        with pytest.raises(httpx.TransportError):
            c.put(files_url("victim", "destination", "/srv/data"), content=BODY)
    assert sp.wait_crashed() == -signal.SIGKILL
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        r = c.get(files_url("victim", "source", "/srv/data"))
        if replace:
            assert r.status_code == 200 and r.content == OLD
        else:
            assert r.status_code == 404, r.text
        # No temporary name was left beside the destination.
        assert sorted(p.name for p in (upper_dir(c, "victim") / "srv").iterdir()) == (
            ["data"] if replace else []
        )
        r = c.put(files_url("victim", "destination", "/srv/data"), content=BODY)
        assert r.status_code == 200, r.text
        assert c.get(files_url("victim", "source", "/srv/data")).content == BODY
        assert c.delete("/containers/victim").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def test_crash_during_download_cuts_stream_and_keeps_file(server_process: ServerProcess) -> None:
    sp = server_process
    sp.start(crash_at="files:out-mid-stream#2")
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert c.post("/containers", json={"handle": "victim"}).status_code == 200
        r = c.put(files_url("victim", "destination", "/srv/data"), content=BODY)
        assert r.status_code == 200, r.text
        got = bytearray()
        url = files_url("victim", "source", "/srv/data")
        with pytest.raises(httpx.TransportError), c.stream("GET", url) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                got += chunk
        assert len(got) < len(BODY)  # the client knows it is incomplete
    assert sp.wait_crashed() == -signal.SIGKILL
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        assert c.get(files_url("victim", "source", "/srv/data")).content == BODY
        assert c.delete("/containers/victim").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []
