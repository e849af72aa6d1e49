"""A `docker://` tag that a pull recorded names the stored image without asking the registry
(an in-memory registry that can be switched off): `inspect` uses it unless `refresh`, a tag
moved by a refresh names the new image, a digest names a stored image by itself, and a record
whose layer is gone is not used."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import httpx
import pytest

from garden.errors import RegistryError
from garden.images.uri import ImageSource
from garden.linux.images.registry import Registries, RegistryOptions
from garden.linux.images.store import LayerStore
from tests.imagebuild import Entry, layer_tar

SOURCE = ImageSource(kind="docker", registry="r:5000", name="app", tag="v1")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """Serves one repository `app`; its `v1` tag can be moved to another image, and the whole
    registry switched off (every request then fails to connect)."""

    def __init__(self) -> None:
        self.up = True
        self.blobs: dict[str, bytes] = {}
        self.tags: dict[str, bytes] = {}
        self.requests: list[str] = []

    def push(self, tag: str, content: bytes) -> str:
        tar = layer_tar([Entry("hello", data=content)])
        blob = gzip.compress(tar, mtime=0)
        config = json.dumps(
            {"os": "linux", "architecture": "amd64", "rootfs": {"diff_ids": [sha(tar)]}}
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha(blob),
                        "size": len(blob),
                    }
                ],
            }
        ).encode()
        self.blobs |= {sha(blob): blob, sha(config): config}
        self.tags[tag] = self.tags[sha(manifest)] = manifest
        return sha(manifest)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if not self.up:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        _, _, kind, ref = request.url.path.rsplit("/", 3)
        body = (self.tags if kind == "manifests" else self.blobs).get(ref)
        if body is None:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        return httpx.Response(200, stream=httpx.ByteStream(body))


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def store(tmp_path: Path, registry: FakeRegistry) -> LayerStore:
    transport = httpx.MockTransport(registry.handle)
    return LayerStore(tmp_path / "images", Registries(RegistryOptions(), transport=transport))


async def pull(store: LayerStore, source: ImageSource, *, refresh: bool = False) -> str:
    """What `ImageService.use` does: the manifest, its layers, the record, the tag."""
    manifest = await store.inspect(source, refresh=refresh)
    for layer in manifest.layers:
        await store.unpack(source, layer)
    if not store.has_image(manifest.digest):
        await store.save_image(manifest)
    await store.tag(source, manifest.digest)
    return manifest.digest


async def test_a_pulled_tag_is_used_without_the_registry(
    store: LayerStore, registry: FakeRegistry
) -> None:
    first = registry.push("v1", b"one\n")
    assert await store.inspect(SOURCE) and store.stored(SOURCE) is None  # not pulled yet
    assert await pull(store, SOURCE) == first
    registry.up = False
    asked = len(registry.requests)
    assert (await store.inspect(SOURCE)).digest == first
    # the same tag spelt otherwise, and the image by its digest
    same = ImageSource(kind="docker", registry="r:5000", name="app", tag="v1")
    by_digest = ImageSource(kind="docker", registry="r:5000", name="app", tag=first)
    assert (await store.inspect(same)).digest == first
    assert (await store.inspect(by_digest)).digest == first
    assert len(registry.requests) == asked
    # a pull asks the registry, which is down
    with pytest.raises(RegistryError, match="refused"):
        await store.inspect(SOURCE, refresh=True)
    # a tag never pulled is not stored
    with pytest.raises(RegistryError):
        await store.inspect(ImageSource(kind="docker", registry="r:5000", name="app", tag="v2"))


async def test_a_refresh_moves_the_tag(store: LayerStore, registry: FakeRegistry) -> None:
    first = registry.push("v1", b"one\n")
    await pull(store, SOURCE)
    second = registry.push("v1", b"two\n")
    assert (await store.inspect(SOURCE)).digest == first  # as stored, like `docker run`
    assert await store.tag(SOURCE, first) is None  # unchanged: nothing to record
    assert await pull(store, SOURCE, refresh=True) == second
    assert store.stored(SOURCE) is not None and store.stored(SOURCE).digest == second  # type: ignore[union-attr]
    assert await store.tag(SOURCE, first) == second  # the previous digest is returned


async def test_a_record_without_its_layers_is_not_used(
    store: LayerStore, registry: FakeRegistry
) -> None:
    digest = registry.push("v1", b"one\n")
    await pull(store, SOURCE)
    manifest = store.stored(SOURCE)
    assert manifest is not None
    store.discard([], manifest.diff_ids)  # a layer gone (as a prune of an unused layer)
    assert store.stored(SOURCE) is None
    # so the registry is asked again, and the layer pulled again
    assert await pull(store, SOURCE) == digest
    assert store.stored(SOURCE) is not None
    assert store.reference(SOURCE) == "r:5000/app:v1"
