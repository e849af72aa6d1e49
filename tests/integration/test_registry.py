"""Containers from registry images (`docker://127.0.0.1:PORT/name#tag`, `docker:///name`): a
local registry (Debian's `docker-registry`) started by each test on loopback, an image the test
builds and pushes with skopeo; layers pulled once each, also under 10 concurrent creates; a
missing tag or name is a 404, an unreachable or silent registry a quick 502; corrupted blobs are
refused; a stored tag is created from without the registry (a pull refreshes it); containers
keep running from stored layers after a server crash with the registry gone."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.imagebuild import write_oci_layout
from tests.integration.conftest import Server, ServerProcess, free_port, leftovers
from tests.integration.test_images import (
    SCRIPT,
    _events,
    create,
    create_at_once,
    sample_image,
    sh,
)
from tests.registry import Registry, running_registry

pytestmark = pytest.mark.root

TIMEOUT = 2.0  # the server's --registry-timeout in these tests


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with running_registry(tmp_path) as reg:
        yield reg


@pytest.fixture
def server_overrides(registry: Registry) -> dict[str, object]:
    return {
        "docker_registry": registry.host,  # docker:///name comes from the local registry
        "insecure_docker_registries": (registry.host,),
        "registry_timeout": TIMEOUT,
    }


async def push_sample(registry: Registry, tmp_path: Path, name: str, marker: str = "") -> None:
    layout = tmp_path / f"layout-{marker or 'plain'}"
    write_oci_layout(layout, {"v1": sample_image(marker)})
    await registry.push(layout, "v1", name, "v1")


async def test_container_from_registry_image(
    server: Server, registry: Registry, tmp_path: Path
) -> None:
    await push_sample(registry, tmp_path, "test/busy")
    handle = await create(
        server, rootfs=f"docker://{registry.host}/test/busy#v1", env=["B=from-client"]
    )
    status, out = await sh(server, handle, SCRIPT)
    assert status == 0, out
    assert out.splitlines() == [
        "hard new sl ",
        "new",
        "/data/new",
        "0",
        "/work",
        "from-image from-client",
    ]
    assert len(await _events(server, "LayerUnpacked")) == 2
    layers = registry.layers("test/busy", "v1")
    gets = await registry.settled_blob_gets("test/busy")
    assert sorted(gets) == sorted([*layers, config := (set(gets) - set(layers)).pop()])
    # Again, by Docker's `:tag` form and by the default registry: nothing pulled again.
    for rootfs in [f"docker://{registry.host}/test/busy:v1", "docker:///test/busy#v1"]:
        again = await create(server, rootfs=rootfs)
        status, out = await sh(server, again, "cat /data/new")
        assert (status, out) == (0, "new\n")
    assert len(await _events(server, "LayerUnpacked")) == 2
    assert len(await _events(server, "ImageImported")) == 1
    # neither the layers nor the config (kept in memory) fetched again; the manifest is
    assert sorted(await registry.settled_blob_gets("test/busy")) == sorted([*layers, config])
    [img] = (await server.client.get("/images")).json()["images"]
    assert img["source"] == f"docker://{registry.host}/test/busy#v1"
    assert img["tags"] == ["v1"] and img["in_use"] == 3


async def test_stored_tag_needs_no_registry_and_a_pull_refreshes_it(
    server: Server, registry: Registry, tmp_path: Path
) -> None:
    c = server.client
    await push_sample(registry, tmp_path, "test/busy")
    uri = f"docker://{registry.host}/test/busy#v1"
    first = await create(server, rootfs=uri)
    asked = await registry.settled_manifest_gets("test/busy")
    assert asked == ["v1"], asked
    # The tag moves in the registry; creates keep using the stored image, asking nothing.
    await push_sample(registry, tmp_path, "test/busy", marker="-2")
    same = await create(server, rootfs=f"docker://{registry.host}/test/busy:v1")
    assert await sh(server, same, "cat /data/new") == (0, "new\n")
    assert await registry.settled_manifest_gets("test/busy") == asked
    # The registry goes away: creates of the stored tag, however spelt, still work.
    registry.stop()
    for rootfs in [uri, "docker:///test/busy#v1", "docker:///test/busy:v1"]:
        handle = await create(server, rootfs=rootfs)
        assert await sh(server, handle, "cat /data/new") == (0, "new\n")
    # A tag never pulled, and a pull, need the registry.
    for method, path, rootfs in [
        ("POST", "/containers", f"docker://{registry.host}/test/busy#v2"),
        ("POST", "/images", uri),
    ]:
        r = await c.request(method, path, json={"rootfs": rootfs})
        assert (r.status_code, r.json()["type"]) == (502, "RegistryError"), r.text
    # Back up: a pull finds the tag moved and records it; creates then use the new image.
    registry.start()
    r = await c.post("/images", json={"rootfs": uri})
    assert r.status_code == 200 and "error" not in r.text, r.text
    newer = await create(server, rootfs=uri)
    assert await sh(server, newer, "cat /data/new") == (0, "new-2\n")
    assert await sh(server, first, "cat /data/new") == (0, "new\n")
    tagged = await _events(server, "ImageTagged")
    reference = f"{registry.host}/test/busy:v1"
    assert [(e["reference"], bool(e["previous"])) for e in tagged] == [
        (reference, False),
        (reference, True),
    ]
    assert tagged[1]["previous"] == tagged[0]["digest"] != tagged[1]["digest"]


async def test_concurrent_creates_pull_each_layer_once(
    server: Server, registry: Registry, tmp_path: Path
) -> None:
    await push_sample(registry, tmp_path, "test/many", marker="-many")
    handles = await create_at_once(server, f"docker://{registry.host}/test/many#v1", 10)
    assert len(handles) == 10
    unpacked = await _events(server, "LayerUnpacked")
    assert len(unpacked) == 2
    assert len({e["diff_id"] for e in unpacked}) == 2
    layers = registry.layers("test/many", "v1")
    gets = await registry.settled_blob_gets("test/many")
    assert sorted(g for g in gets if g in layers) == sorted(layers), gets
    status, out = await sh(server, handles[-1], "cat /data/new")
    assert (status, out) == (0, "new-many\n")


async def test_missing_tag_or_name_is_404(
    server: Server, registry: Registry, tmp_path: Path
) -> None:
    await push_sample(registry, tmp_path, "test/busy")
    c = server.client
    for rootfs in [
        f"docker://{registry.host}/test/busy#v2",
        f"docker://{registry.host}/test/absent#v1",
        f"docker://{registry.host}/test/busy@sha256:{'0' * 64}",
    ]:
        r = await c.post("/containers", json={"rootfs": rootfs})
        assert (r.status_code, r.json()["type"]) == (404, "ImageNotFoundError"), r.text
        assert "MANIFEST_UNKNOWN" in r.json()["message"] or "NAME_UNKNOWN" in r.json()["message"]
    assert (await c.get("/containers")).json()["handles"] == []
    assert (await c.get("/images")).json() == {"images": [], "layers": []}


async def test_unreachable_registry_is_a_quick_502(server: Server) -> None:
    c = server.client
    closed = free_port()  # nothing listens there
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        for rootfs, says in [
            (f"docker://127.0.0.1:{closed}/test/busy#v1", "refused"),
            (f"docker://127.0.0.1:{port}/test/busy#v1", "did not answer in time"),
        ]:
            started = time.monotonic()
            r = await c.post("/containers", json={"rootfs": rootfs})
            took = time.monotonic() - started
            assert (r.status_code, r.json()["type"]) == (502, "RegistryError"), r.text
            assert says in r.json()["message"], r.text
            assert took < TIMEOUT + 3, took
    assert (await c.get("/containers")).json()["handles"] == []


async def test_plain_http_registry_not_named_insecure(server: Server, registry: Registry) -> None:
    # `localhost:PORT` is the same registry under a name that is not in the insecure list: the
    # server speaks https to it and says what to do.
    r = await server.client.post(
        "/containers", json={"rootfs": f"docker://localhost:{registry.port}/test/busy#v1"}
    )
    assert (r.status_code, r.json()["type"]) == (502, "RegistryError"), r.text
    assert "--insecure-docker-registry" in r.json()["message"]


async def test_cli_imports_from_registry(
    server: Server, registry: Registry, tmp_path: Path
) -> None:
    from tests.integration.test_cli import garden

    await push_sample(registry, tmp_path, "test/busy")
    ran = await garden(server, "images", "import", f"docker://{registry.host}/test/busy:v1")
    assert ran.code == 0, ran.err
    assert ran.text.strip().startswith("sha256:")
    gets = await registry.settled_blob_gets("test/busy")
    assert set(registry.layers("test/busy", "v1")) <= set(gets)
    ran = await garden(server, "images", "import", f"docker://{registry.host}/test/busy:v9")
    assert ran.code == 1 and "ImageNotFoundError" in ran.err.decode()


@pytest.mark.parametrize("where", ["gzip-trailer", "gzip-mtime"])
async def test_layer_that_does_not_match_its_digest_is_refused(
    server: Server, registry: Registry, tmp_path: Path, where: str
) -> None:
    await push_sample(registry, tmp_path, "test/bad")
    top = registry.layers("test/bad", "v1")[-1]
    hex_ = top.removeprefix("sha256:")
    data = registry.root / "data/docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"
    blob = bytearray(data.read_bytes())
    # Same size, another digest: a CRC that gzip itself refuses, or a gzip header mtime that
    # only the digest check sees.
    blob[-5 if where == "gzip-trailer" else 5] ^= 0xFF
    data.write_bytes(bytes(blob))
    r = await server.client.post(
        "/containers", json={"rootfs": f"docker://{registry.host}/test/bad#v1"}
    )
    assert (r.status_code, r.json()["type"]) == (400, "InvalidImageError"), r.text
    assert (await server.client.get("/containers")).json()["handles"] == []
    # the good base layer stays (content-addressed, verified); nothing of the bad one
    layers = (await server.client.get("/images")).json()["layers"]
    assert len(layers) == 1
    store = Path(server.config.state_dir, "images", "layers", "sha256")
    assert [n for n in store.iterdir() if n.name.startswith(".tmp-")] == []


def test_containers_outlive_server_and_registry(
    server_process: ServerProcess, registry: Registry, tmp_path: Path
) -> None:
    trio.run(push_sample, registry, tmp_path, "test/busy")
    sp = server_process
    sp.extra_args = ["--insecure-docker-registry", registry.host, "--registry-timeout", "2"]
    sp.start()
    uri = f"docker://{registry.host}/test/busy#v1"
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        r = c.post("/containers", json={"handle": "pulled", "rootfs": uri})
        assert r.status_code == 200, r.text
    sp.kill(signal.SIGKILL)
    registry.stop()
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        r = c.post("/containers/pulled/processes", json={"path": "cat", "args": ["/data/new"]})
        lines = [json.loads(line) for line in r.text.splitlines() if line]
        assert [x["data"] for x in lines if x.get("source") == "stdout"] == ["new\n"]
        assert lines[-1]["exit_status"] == 0
        # A new create of the stored tag uses the stored image: the registry is not needed.
        r = c.post("/containers", json={"handle": "again", "rootfs": uri})
        assert r.status_code == 200, r.text
        # A pull asks the registry: 502 while it is down.
        r = c.post("/images", json={"rootfs": uri})
        assert (r.status_code, r.json()["type"]) == (502, "RegistryError"), r.text
        assert c.delete("/containers/pulled").status_code == 200
        assert c.delete("/containers/again").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []
