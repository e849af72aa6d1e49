"""The registry client (garden/linux/images/registry.py) against a fake registry in memory
(httpx.MockTransport): names on Docker Hub, plain http for insecure registries, the anonymous
token dance, platform indexes, digest checks, and the registry's errors in our terms."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from garden.errors import ImageNotFoundError, InvalidImageError, RegistryError
from garden.images.uri import ImageSource, parse_rootfs
from garden.linux.images.formats import _ARCH
from garden.linux.images.registry import DOCKER_HUB, Reference, Registries, RegistryOptions

CONFIG = json.dumps(
    {
        "config": {"Env": ["PATH=/bin"], "User": "app"},
        "rootfs": {"diff_ids": ["sha256:" + "1" * 64]},
    }
).encode()
LAYER = b"layer bytes"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(CONFIG)},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha(LAYER),
                "size": len(LAYER),
            }
        ],
    }
).encode()
INDEX = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"digest": "sha256:" + "9" * 64, "platform": {"os": "linux", "architecture": "x"}},
            {"digest": sha(MANIFEST), "platform": {"os": "linux", "architecture": _ARCH}},
        ],
    }
).encode()

Handler = Callable[[httpx.Request], httpx.Response]


def streamed(body: bytes) -> httpx.Response:
    """An answer read as a stream, as from the network (`content=` would be read already)."""
    return httpx.Response(200, stream=httpx.ByteStream(body))


def registry(blobs: dict[str, bytes], tags: dict[str, bytes], seen: list[str]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.scheme} {request.url.path}")
        path = request.url.path
        if "/manifests/" in path:
            ref = path.rpartition("/")[2]
            body = tags.get(ref) or {sha(b): b for b in tags.values()}.get(ref)
            if body is None:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            return streamed(body)
        if "/blobs/" in path:
            blob = blobs.get(path.rpartition("/")[2])
            if blob is None:
                return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN"}]})
            return streamed(blob)
        return httpx.Response(404)

    return handle


def client(handler: Handler, **options: Any) -> Registries:
    def as_network(request: httpx.Request) -> httpx.Response:
        r = handler(request)
        if not r.is_stream_consumed:
            return r
        # `httpx.Response(json=...)` is read already; the network's answers are streams.
        return httpx.Response(r.status_code, headers=r.headers, stream=httpx.ByteStream(r.content))

    return Registries(RegistryOptions(**options), transport=httpx.MockTransport(as_network))


def source(uri: str) -> ImageSource:
    parsed = parse_rootfs(uri)
    assert isinstance(parsed, ImageSource)
    return parsed


def test_names_on_docker_hub_and_elsewhere() -> None:
    hub = Registries()
    assert hub.reference(source("docker:///busybox")) == Reference(
        DOCKER_HUB, "library/busybox", "latest"
    )
    assert hub.reference(source("docker://docker.io/team/app#v1")) == Reference(
        DOCKER_HUB, "team/app", "v1"
    )
    local = Registries(RegistryOptions(default="127.0.0.1:5000", insecure=("127.0.0.1:5000",)))
    assert local.reference(source("docker:///busybox")) == Reference(
        "127.0.0.1:5000", "busybox", "latest"
    )
    assert local.url("127.0.0.1:5000", "/v2/") == "http://127.0.0.1:5000/v2/"
    assert local.url("r.example", "/v2/") == "https://r.example/v2/"


def test_reads_an_image_through_an_index() -> None:
    seen: list[str] = []
    blobs = {sha(CONFIG): CONFIG, sha(LAYER): LAYER}
    reg = client(registry(blobs, {"v1": INDEX, sha(MANIFEST): MANIFEST}, seen), insecure=("r",))
    image = reg.read_image(source("docker://r/app#v1"))
    assert image.digest == sha(MANIFEST)
    assert image.tags == ["v1"] and image.source == "docker://r/app#v1"
    assert [layer.blob for layer in image.layers] == [sha(LAYER)]
    assert image.config.user == "app"
    assert seen == [
        "http /v2/app/manifests/v1",
        f"http /v2/app/manifests/{sha(MANIFEST)}",
        f"http /v2/app/blobs/{sha(CONFIG)}",
    ]
    with reg.open_blob(source("docker://r/app#v1"), image.layers[0]) as blob:
        assert blob.read(4) + blob.read() == LAYER
    # the config is content-addressed: a second read asks only for the manifests
    seen.clear()
    reg.read_image(source("docker://r/app#v1"))
    assert all("/manifests/" in s for s in seen)


def test_digest_references_and_configs_are_checked() -> None:
    forged = MANIFEST.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
    blobs = {sha(CONFIG): CONFIG + b" "}
    reg = client(registry(blobs, {"v1": MANIFEST, sha(MANIFEST): forged}, []))
    with pytest.raises(InvalidImageError, match="has digest"):
        reg.read_image(source(f"docker://r/app@{sha(MANIFEST)}"))
    with pytest.raises(InvalidImageError, match="does not match its digest"):
        reg.read_image(source("docker://r/app#v1"))


def test_schema1_manifests_are_refused() -> None:
    old = json.dumps({"schemaVersion": 1, "fsLayers": []}).encode()
    reg = client(registry({}, {"v1": old}, []))
    with pytest.raises(InvalidImageError, match="only OCI and Docker schema 2"):
        reg.read_image(source("docker://r/app#v1"))


def test_a_blob_longer_than_its_manifest_says_is_refused() -> None:
    reg = client(registry({sha(CONFIG): CONFIG, sha(LAYER): LAYER * 3}, {"v1": MANIFEST}, []))
    image = reg.read_image(source("docker://r/app#v1"))
    with (
        reg.open_blob(source("docker://r/app#v1"), image.layers[0]) as blob,
        pytest.raises(InvalidImageError, match="more than its 11 bytes"),
    ):
        blob.read()


def test_anonymous_token_is_fetched_once_and_sent() -> None:
    seen: list[str] = []
    inner = registry({sha(CONFIG): CONFIG}, {"v1": MANIFEST}, seen)
    tokens = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal tokens
        if request.url.host == "auth.example":
            tokens += 1
            assert request.url.params["scope"] == "repository:library/app:pull"
            assert request.url.params["service"] == "registry.example"
            return httpx.Response(200, json={"token": "t0k"})
        if request.headers.get("Authorization") != "Bearer t0k":
            challenge = 'Bearer realm="https://auth.example/token",service="registry.example"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return inner(request)

    reg = client(handle, default="docker.io")
    for _ in range(2):
        image = reg.read_image(source("docker:///app#v1"))
        assert image.digest == sha(MANIFEST)
    assert tokens == 1
    assert seen[0] == "https /v2/library/app/manifests/v1"


@pytest.mark.parametrize(
    ("answer", "error", "says"),
    [
        (
            httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN", "message": "no repo"}]}),
            ImageNotFoundError,
            "404: NAME_UNKNOWN: no repo",
        ),
        (
            httpx.Response(500, json={"errors": [{"code": "UNKNOWN", "message": "disk on fire"}]}),
            RegistryError,
            "500: UNKNOWN: disk on fire",
        ),
        (httpx.Response(401, text="go away"), RegistryError, "401: go away"),
        (httpx.Response(429, text="slow down"), RegistryError, "429: slow down"),
    ],
)
def test_registry_errors_say_what_the_registry_said(
    answer: httpx.Response, error: type[Exception], says: str
) -> None:
    reg = client(lambda _: answer)
    with pytest.raises(error, match=says):
        reg.read_image(source("docker://r/app#v1"))


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        (httpx.ReadTimeout("timed out"), "did not answer in time"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "unreachable: .*refused"),
        (httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER]"), "--insecure-docker-registry"),
    ],
)
def test_transport_failures_are_registry_errors(failure: Exception, says: str) -> None:
    def handle(_: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(RegistryError, match=says):
        client(handle).read_image(source("docker://r/app#v1"))
