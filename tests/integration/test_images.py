"""Containers from images the tests build themselves (OCI layout gzip/zstd/plain, OCI archive,
docker archive): whiteouts, opaque dirs, symlinks and hardlinks as overlay lower layers, the
image's Env/WorkingDir/User, refused layers, prune beside containers in use, and 20 creates of
one new image unpacking each layer once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.imagebuild import (
    Entry,
    Image,
    busybox_entries,
    layer_tar,
    write_docker_archive,
    write_oci_archive,
    write_oci_layout,
)
from tests.integration.conftest import NO_REGISTRY, Server, make_config
from tests.integration.test_processes_api import exit_status, output, run

pytestmark = pytest.mark.root


def sample_image(marker: str = "") -> Image:
    base = layer_tar(
        [
            *busybox_entries(),
            Entry("etc/motd", data=b"hidden by a whiteout\n"),
            Entry("data", "dir", mode=0o755),
            Entry("data/old", data=b"old\n"),
            Entry("home", "dir", mode=0o755),
            Entry("home/alice", "dir", mode=0o755, uid=1000, gid=1000),
        ]
    )
    top = layer_tar(
        [
            Entry("etc/.wh.motd"),
            Entry("data/.wh..wh..opq"),
            Entry("data/new", data=f"new{marker}\n".encode()),
            Entry("data/hard", "hardlink", link="data/new"),
            Entry("data/sl", "symlink", link="/data/new"),
            Entry("work", "dir", mode=0o777),
        ]
    )
    return Image(
        [base, top], env=["PATH=/bin", "A=from-image", "B=from-image"], working_dir="/work"
    )


SCRIPT = (
    "test -e /etc/motd && echo motd-present; ls /data | tr '\\n' ' '; echo; cat /data/hard; "
    "readlink /data/sl; id -u; pwd; echo $A $B"
)


async def create(server: Server, **spec: Any) -> str:
    r = await server.client.post("/containers", json=spec)
    assert r.status_code == 200, r.text
    return str(r.json()["handle"])


async def create_at_once(server: Server, rootfs: str, n: int) -> list[str]:
    """Handles of `n` containers from `rootfs`, all created concurrently."""
    handles: list[str] = []

    async def one() -> None:
        handles.append(await create(server, rootfs=rootfs))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return handles


async def sh(server: Server, handle: str, script: str, **spec: Any) -> tuple[int, str]:
    payloads = await run(server, handle, {"path": "sh", "args": ["-c", script], **spec})
    return exit_status(payloads), output(payloads, "stdout").decode() + output(
        payloads, "stderr"
    ).decode()


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    return d


@pytest.mark.parametrize(
    "kind", ["oci-gzip", "oci-zstd", "oci-plain", "oci-archive", "docker-archive"]
)
async def test_container_from_image(server: Server, images_dir: Path, kind: str) -> None:
    image = sample_image()
    if kind.startswith("oci-") and kind != "oci-archive":
        write_oci_layout(images_dir / "layout", {"v1": image}, kind[4:])  # type: ignore[arg-type]
        uri = f"oci://{images_dir}/layout:v1"
    elif kind == "oci-archive":
        write_oci_archive(images_dir / "img.tar", {"v1": image})
        uri = f"oci-archive://{images_dir}/img.tar:v1"
    else:
        write_docker_archive(images_dir / "img.tar", {"example/busy:v1": image})
        uri = f"docker-archive://{images_dir}/img.tar:example/busy:v1"
    handle = await create(server, rootfs=uri, env=["B=from-client"])
    status, out = await sh(server, handle, SCRIPT)
    assert status == 0, out
    # the whiteout hides etc/motd, the opaque dir hides data/old; root by default; WorkingDir
    assert out.splitlines() == [
        "hard new sl ",
        "new",
        "/data/new",
        "0",
        "/work",
        "from-image from-client",
    ]
    # the image's User is the default user; an explicit user still wins
    status, out = await sh(server, handle, "id -u; pwd", user="alice", dir="/tmp")
    assert (status, out.split()) == (0, ["1000", "/tmp"])
    listing = (await server.client.get("/images")).json()
    [img] = listing["images"]
    assert img["in_use"] == 1 and len(img["layers"]) == 2 and img["size"] > 1_000_000
    assert all(layer["in_use"] == 1 for layer in listing["layers"])


async def test_image_user_is_the_default_user(server: Server, images_dir: Path) -> None:
    image = sample_image()
    image.user = "alice"
    write_oci_layout(images_dir / "layout", {"latest": image})
    handle = await create(server, rootfs=f"oci://{images_dir}/layout")
    status, out = await sh(server, handle, "id -u")
    assert (status, out.strip()) == (0, "1000")


BAD_LAYERS = {
    "dotdot": [Entry("../escaped", data=b"x")],
    "absolute": [Entry("/etc/escaped", data=b"x")],
    "symlink-parent": [Entry("d", "symlink", link="/tmp"), Entry("d/escaped", data=b"x")],
    "hardlink-outside": [Entry("h", "hardlink", link="../../etc/passwd")],
    "hardlink-missing": [Entry("h", "hardlink", link="etc/shadow")],
}


@pytest.mark.parametrize("bad", sorted(BAD_LAYERS))
async def test_escaping_member_is_refused(server: Server, images_dir: Path, bad: str) -> None:
    good = layer_tar(busybox_entries())
    evil = layer_tar(BAD_LAYERS[bad])
    write_oci_layout(images_dir / "layout", {"v1": Image([good, evil])})
    r = await server.client.post("/containers", json={"rootfs": f"oci://{images_dir}/layout:v1"})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "InvalidImageError"
    assert (await server.client.get("/containers")).json()["handles"] == []
    store = Path(server.config.state_dir, "images")
    # the good layer stays (it is fine and content-addressed); nothing of the bad one
    layers = os.listdir(store / "layers" / "sha256")
    assert len(layers) == 1 and not layers[0].startswith(".tmp-")
    assert not (Path("/tmp") / "escaped").exists()


async def test_bad_and_missing_images(server: Server, images_dir: Path) -> None:
    c = server.client
    for rootfs, status, kind in [
        ("oci://relative/path", 400, "InvalidRequestError"),
        ("nope:///x", 400, "InvalidRequestError"),
        (f"oci://{images_dir}/absent:v1", 404, "ImageNotFoundError"),
    ]:
        r = await c.post("/containers", json={"rootfs": rootfs})
        assert (r.status_code, r.json()["type"]) == (status, kind), rootfs
    write_oci_layout(images_dir / "layout", {"v1": sample_image()})
    r = await c.post("/containers", json={"rootfs": f"oci://{images_dir}/layout:v2"})
    assert (r.status_code, r.json()["type"]) == (404, "ImageNotFoundError")
    assert (await c.get("/containers")).json()["handles"] == []


async def test_prune_never_removes_a_layer_in_use(server: Server, images_dir: Path) -> None:
    c = server.client
    write_oci_layout(images_dir / "layout", {"a": sample_image("-a"), "b": sample_image("-b")})
    handle = await create(server, rootfs=f"oci://{images_dir}/layout:a")
    await create(server, rootfs=f"oci://{images_dir}/layout:b", handle="b")
    assert (await c.delete("/containers/b")).status_code == 200
    before = (await c.get("/images")).json()
    assert len(before["images"]) == 2 and len(before["layers"]) == 3  # the base is shared
    pruned = (await c.post("/images/prune")).json()
    assert len(pruned["images"]) == 1 and len(pruned["layers"]) == 1
    after = (await c.get("/images")).json()
    assert [i["tags"] for i in after["images"]] == [["a"]]
    assert {layer["in_use"] for layer in after["layers"]} == {1}
    status, out = await sh(server, handle, "cat /data/new")
    assert (status, out) == (0, "new-a\n")
    assert (await c.delete(f"/containers/{handle}")).status_code == 200
    pruned = (await c.post("/images/prune")).json()
    assert len(pruned["images"]) == 1 and len(pruned["layers"]) == 2
    assert (await c.get("/images")).json() == {"images": [], "layers": []}
    events = await _events(server, "ImagesPruned")
    assert len(events) == 2


async def _events(server: Server, kind: str) -> list[dict[str, Any]]:
    r = await server.client.get("/events", params={"type": kind})
    return [json.loads(line)["event"] for line in r.text.splitlines() if line]


async def test_concurrent_creates_unpack_each_layer_once(server: Server, images_dir: Path) -> None:
    write_oci_layout(images_dir / "layout", {"v1": sample_image()})
    handles = await create_at_once(server, f"oci://{images_dir}/layout:v1", 20)
    assert len(handles) == 20
    unpacked = await _events(server, "LayerUnpacked")
    assert len(unpacked) == 2
    assert len(await _events(server, "ImageImported")) == 1
    status, out = await sh(server, handles[-1], "cat /data/new")
    assert (status, out) == (0, "new\n")
    [img] = (await server.client.get("/images")).json()["images"]
    assert img["in_use"] == 20


async def test_cli_import_list_prune(server: Server, images_dir: Path) -> None:
    from tests.integration.test_cli import garden

    write_docker_archive(images_dir / "img.tar", {"busy:v1": sample_image()})
    ran = await garden(server, "images", "import", f"docker-archive://{images_dir}/img.tar")
    assert ran.code == 0, ran.err
    digest = ran.text.strip()
    assert digest.startswith("sha256:")
    ran = await garden(server, "images")
    assert ran.code == 0 and "busy:v1" in ran.text and digest[7:19] in ran.text
    ran = await garden(server, "images", "prune")
    assert ran.code == 0 and "removed 1 images, 2 layers" in ran.text, ran.err
    ran = await garden(server, "images", "import", f"oci://{images_dir}/absent")
    assert ran.code == 1 and "ImageNotFoundError" in ran.err.decode()


async def test_test_servers_default_to_no_registry(server: Server) -> None:
    # Guard for the rule that tests reach only 127.0.0.0/8: `docker:///name` in any test's
    # server goes to a closed loopback port, never to Docker Hub.
    assert make_config(Path("/nonexistent")).docker_registry == NO_REGISTRY
    r = await server.client.post("/containers", json={"rootfs": "docker:///busybox"})
    assert (r.status_code, r.json()["type"]) == (502, "RegistryError"), r.text
