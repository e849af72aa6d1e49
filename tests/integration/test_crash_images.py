"""Crashes in the middle of an image import or a prune (GARDEN_CRASH_AT, garden/faults.py): the
store appears by renames, so after a restart an image is either fully there or absent, a new
import and creates from it work, and a prune then leaves nothing of it on disk."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.imagebuild import write_oci_layout
from tests.integration.conftest import ServerProcess, leftovers
from tests.integration.test_images import sample_image

pytestmark = pytest.mark.root

TIMEOUT = httpx.Timeout(60)


def import_image(c: httpx.Client, uri: str) -> None:
    r = c.post("/images", json={"rootfs": uri})
    assert r.status_code == 200, r.text
    assert '"image"' in r.text.splitlines()[-1], r.text


def stored_on_disk(state_dir: Path) -> list[str]:
    """Layer and image records and shifted copies under the store, temp dirs included."""
    root = state_dir / "images"
    found: list[str] = []
    for pattern in ("layers/sha256/*", "images/*", "shifted/*/*"):  # shifted/<uid base>/<layer>
        found += [str(p.relative_to(root)) for p in root.glob(pattern)]
    found += [p.name for p in root.glob(".tmp-*")] if root.is_dir() else []
    return found


@pytest.mark.parametrize(
    ("point", "prune_first"),
    [
        ("record:LayerUnpacked", False),  # the first layer is in place, its record is not
        ("record:LayerUnpacked#2", False),
        ("record:ImageImported", False),
        ("record:ImagesPruned", True),
    ],
)
def test_crash_in_image_import_or_prune(
    server_process: ServerProcess, tmp_path: Path, point: str, prune_first: bool
) -> None:
    sp = server_process
    layout = tmp_path / "layout"
    write_oci_layout(layout, {"v1": sample_image()})
    uri = f"oci://{layout}:v1"
    sp.start(crash_at=point)
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        if prune_first:
            import_image(c, uri)
            operation = lambda: c.post("/images/prune")  # noqa: E731
        else:
            operation = lambda: c.post("/images", json={"rootfs": uri})  # noqa: E731
        with pytest.raises(httpx.TransportError):
            operation()
    assert sp.wait_crashed() == -signal.SIGKILL
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        listing = c.get("/images").json()
        for image in listing["images"]:  # whatever is listed is whole
            assert all(d in {la["diff_id"] for la in listing["layers"]} for d in image["layers"])
        import_image(c, uri)
        r = c.post("/containers", json={"handle": "from-image", "rootfs": uri})
        assert r.status_code == 200, r.text
        with c.stream(
            "POST", "/containers/from-image/processes", json={"path": "cat", "args": ["/data/new"]}
        ) as run:
            body = run.read().decode()
        assert '"exit_status":0' in body.replace(" ", ""), body
        assert c.delete("/containers/from-image").status_code == 200
        c.post("/images/prune").raise_for_status()
        assert c.get("/images").json() == {"images": [], "layers": []}
    sp.kill(signal.SIGTERM)  # a clean stop empties the store's trash
    assert stored_on_disk(sp.state_dir) == []
    assert leftovers(sp.config) == []
