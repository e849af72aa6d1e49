"""The layer store pulling `docker://` layers through the registry client (an in-memory
registry): concurrent unpacks of one layer pull it once, a blob that does not match its digest
leaves nothing, and when the pull fails the creates waiting for it fail with it instead of each
trying (and timing out) in turn."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import httpx
import pytest
import trio

from garden.errors import InvalidImageError, RegistryError
from garden.images.model import LayerRef
from garden.images.uri import ImageSource
from garden.linux.images.registry import Registries, RegistryOptions
from garden.linux.images.store import LayerStore
from tests.imagebuild import Entry, layer_tar

TAR = layer_tar([Entry("hello", data=b"hi\n"), Entry("dir", "dir", mode=0o755)])
BLOB = gzip.compress(TAR, mtime=0)
SOURCE = ImageSource(kind="docker", registry="r", name="app", tag="v1")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER = LayerRef(
    diff_id=sha(TAR),
    blob=sha(BLOB),
    media_type="application/vnd.oci.image.layer.v1.tar+gzip",
    size=len(BLOB),
)


def store(tmp_path: Path, answer: httpx.Response | Exception, gets: list[str]) -> LayerStore:
    def handle(request: httpx.Request) -> httpx.Response:
        gets.append(request.url.path)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer.status_code, stream=httpx.ByteStream(answer.content))

    registries = Registries(RegistryOptions(), transport=httpx.MockTransport(handle))
    return LayerStore(tmp_path / "images", registries)


async def unpack_many(s: LayerStore, n: int) -> list[object]:
    results: list[object] = []

    async def one() -> None:
        try:
            results.append(await s.unpack(SOURCE, LAYER))
        except (RegistryError, InvalidImageError) as e:
            results.append(e)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return results


async def test_concurrent_unpacks_pull_a_layer_once(tmp_path: Path) -> None:
    gets: list[str] = []
    s = store(tmp_path, httpx.Response(200, content=BLOB), gets)
    results = await unpack_many(s, 5)
    assert gets == [f"/v2/app/blobs/{LAYER.blob}"]
    assert sum(r is not None for r in results) == 1 and s.unpacks == 1
    assert (s.layer_root(LAYER.diff_id) / "hello").read_bytes() == b"hi\n"
    assert await s.unpack(SOURCE, LAYER) is None and len(gets) == 1


async def test_a_blob_that_does_not_match_leaves_nothing(tmp_path: Path) -> None:
    other = gzip.compress(TAR, mtime=1)  # same tar, same size, another blob digest
    s = store(tmp_path, httpx.Response(200, content=other), [])
    with pytest.raises(InvalidImageError, match="read digest"):
        await s.unpack(SOURCE, LAYER)
    assert not s.has_layer(LAYER.diff_id)
    assert [p.name for p in s.layers_dir.iterdir()] == []


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("timed out"),
        httpx.Response(503, content=json.dumps({"errors": [{"code": "UNAVAILABLE"}]}).encode()),
    ],
)
async def test_waiters_share_a_failed_pull(
    tmp_path: Path, failure: httpx.Response | Exception
) -> None:
    gets: list[str] = []
    s = store(tmp_path, failure, gets)
    results = await unpack_many(s, 5)
    assert len(gets) == 1
    assert all(isinstance(r, RegistryError) for r in results), results
    # a later create tries again
    with pytest.raises(RegistryError):
        await s.unpack(SOURCE, LAYER)
    assert len(gets) == 2
