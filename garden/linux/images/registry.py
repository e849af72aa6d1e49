"""Pulling images from a registry (the Docker Registry HTTP API V2, which the OCI distribution
spec standardises): the manifest of a tag or digest (the `linux/<arch>` one when it is an
index), the image's config, and a stream of each layer blob; an anonymous bearer token when the
registry asks for one (Docker Hub does), with the server's credentials for the registry
(`auth.py`) when it has some, or basic auth when the registry asks for that.
docs/adr/registry-client.md says why this is a small client of our own and not `skopeo copy`.

Blocking (httpx's sync client): call it from worker threads, as the store does. Every request
has bounded timeouts, so an unreachable or silent registry is an error, never a hang. Errors:
`ImageNotFoundError` (the registry says the name, tag or blob is unknown), `InvalidImageError`
(a manifest that does not match its digest, or that we cannot use), `RegistryError` (not
reachable, timed out, or any other error answer, with the registry's own message). Digests of
manifests and configs are checked here; layer blobs are checked by the store as it unpacks them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, final

import msgspec

from garden.errors import GardenError, ImageNotFoundError, InvalidImageError, RegistryError
from garden.images.model import ImageManifest, LayerRef
from garden.images.uri import ImageSource
from garden.linux.images.auth import RegistryAuth
from garden.linux.images.formats import (
    DIGEST_RE,
    config_digest,
    image_of,
    is_index,
    platform_manifest,
)

if TYPE_CHECKING:  # httpx is imported on the first pull: 0.1 s of every server start
    import httpx

DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", DOCKER_HUB}
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_MAX_JSON = 16 << 20
_MAX_ERROR = 64 << 10
_BLOCK = 1 << 20
_MAX_CONFIGS = 256  # image configs kept in memory, so a create from a known image fetches one
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryOptions(msgspec.Struct, frozen=True, kw_only=True):
    """`default`: the registry of `docker:///name` (Docker Hub, as in Garden); `insecure`:
    registries (`host` or `host:port`) spoken to over plain http; `timeout`: seconds to
    connect, and then between any two reads."""

    default: str = DOCKER_HUB
    insecure: tuple[str, ...] = ()
    timeout: float = 30.0


class Reference(NamedTuple):
    registry: str  # host[:port]
    name: str  # the repository, e.g. library/busybox
    reference: str  # a tag or a sha256 digest


@final
class Registries:
    """The registries this server pulls from. `transport` replaces the network in tests."""

    def __init__(
        self,
        options: RegistryOptions | None = None,
        transport: httpx.BaseTransport | None = None,
        auth: RegistryAuth | None = None,
    ) -> None:
        self.options = options or RegistryOptions()
        self.transport = transport
        self.auth = auth or RegistryAuth()
        self._tokens: dict[tuple[str, str], str] = {}
        self._basic: set[str] = set()  # registries that asked for basic auth
        self._configs: dict[str, Any] = {}  # by digest: content-addressed, never stale
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None

    def client(self) -> httpx.Client:
        """One client for every pull (its pool is thread-safe): making one loads the CA
        bundle, which costs about 100 ms here, so not once per request."""
        import httpx

        with self._lock:
            if self._client is None:
                t = self.options.timeout
                self._client = httpx.Client(
                    timeout=httpx.Timeout(t, connect=min(t, 10.0)),
                    follow_redirects=True,
                    transport=self.transport,
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=8),
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def reference(self, source: ImageSource) -> Reference:
        registry = source.registry or self.options.default
        name = source.name
        if registry in _HUB_ALIASES:
            registry = DOCKER_HUB
            if "/" not in name:
                name = "library/" + name
        return Reference(registry, name, source.tag or "latest")

    def url(self, registry: str, path: str) -> str:
        insecure = registry in self.options.insecure
        return f"{'http' if insecure else 'https'}://{registry}{path}"

    # -- images ---------------------------------------------------------------------------

    def read_image(self, source: ImageSource) -> ImageManifest:
        """The image `source` names, as the store keeps it (its manifest's digest, its
        layers bottom first, its config's defaults)."""
        ref = self.reference(source)
        where = source.uri()
        manifest, digest = self._manifest(ref, ref.reference, where)
        if is_index(manifest):
            digest = platform_manifest(manifest, where)
            manifest, _ = self._manifest(ref, digest, where)
        if manifest.get("schemaVersion") != 2 or is_index(manifest):
            raise InvalidImageError(
                f"{where}: unsupported manifest (schema {manifest.get('schemaVersion')!r}, "
                f"type {manifest.get('mediaType')!r}): only OCI and Docker schema 2 images"
            )
        config_id = config_digest(manifest, where)
        config = self._configs.get(config_id)
        if config is None:
            config = self._blob_json(ref, config_id, where)
            with self._lock:
                if len(self._configs) >= _MAX_CONFIGS:
                    self._configs.pop(next(iter(self._configs)))
                self._configs[config_id] = config
        tags = [] if DIGEST_RE.fullmatch(ref.reference) else [ref.reference]
        return image_of(manifest, config, digest=digest, source=source, tags=tags, where=where)

    def _manifest(self, ref: Reference, reference: str, where: str) -> tuple[Any, str]:
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        with self._get(ref, f"/v2/{ref.name}/manifests/{reference}", where, headers) as r:
            data = _read_limited(r, where)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if DIGEST_RE.fullmatch(reference) and digest != reference:
            raise InvalidImageError(f"{where}: the manifest of {reference} has digest {digest}")
        manifest = _json(data, where, "manifest")
        if not isinstance(manifest, dict):
            raise InvalidImageError(f"{where}: the manifest of {reference} is not an object")
        return manifest, digest

    def _blob_json(self, ref: Reference, digest: str, where: str) -> Any:
        with self._get(ref, f"/v2/{ref.name}/blobs/{digest}", where) as r:
            data = _read_limited(r, where)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise InvalidImageError(f"{where}: blob {digest} does not match its digest")
        return _json(data, where, f"blob {digest}")

    @contextmanager
    def open_blob(self, source: ImageSource, layer: LayerRef) -> Iterator[BlobStream]:
        """A layer blob as a stream of its bytes (at most the size the manifest gives)."""
        ref = self.reference(source)
        where = source.uri()
        with self._get(ref, f"/v2/{ref.name}/blobs/{layer.blob}", where) as r:
            yield BlobStream(r, limit=layer.size, where=f"{where}: blob {layer.blob}")

    # -- HTTP -----------------------------------------------------------------------------

    @contextmanager
    def _get(
        self, ref: Reference, path: str, where: str, headers: dict[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A GET that has answered 2xx (streamed: read it inside the `with`); a token is
        fetched and the request made again when the registry asks for one."""
        url = self.url(ref.registry, path)
        client = self.client()
        with _translated(ref.registry, where):
            for attempt in range(2):
                sent = dict(headers or {})
                authorization = self._authorization(ref)
                if authorization:
                    sent["Authorization"] = authorization
                with client.stream("GET", url, headers=sent) as r:
                    challenge = r.headers.get("WWW-Authenticate", "")
                    scheme = challenge.partition(" ")[0].lower()
                    if r.status_code == 401 and attempt == 0 and scheme == "bearer":
                        r.close()
                        self._fetch_token(client, ref, challenge, where)
                        continue
                    if (
                        r.status_code == 401
                        and attempt == 0
                        and scheme == "basic"
                        and self.auth.basic(ref.registry)
                    ):
                        r.close()
                        with self._lock:
                            self._basic.add(ref.registry)
                        continue
                    if r.status_code >= 400:
                        raise _answer_error(r, ref.registry, where, hint=self._hint(r, ref))
                    yield r
                    return

    def _authorization(self, ref: Reference) -> str | None:
        token = self._tokens.get((ref.registry, ref.name))
        if token:
            return f"Bearer {token}"
        if ref.registry in self._basic:
            return self.auth.basic(ref.registry)
        return None

    def _hint(self, r: httpx.Response, ref: Reference) -> str:
        if r.status_code not in (401, 403):
            return ""
        if self.auth.credentials(ref.registry) is None:
            return f" (no credentials for {ref.registry} in --registry-auth-file)"
        return f" (with the credentials for {ref.registry} of --registry-auth-file)"

    def _fetch_token(
        self, client: httpx.Client, ref: Reference, challenge: str, where: str
    ) -> None:
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"{where}: registry {ref.registry} asks for a token at {realm!r}")
        params.setdefault("scope", f"repository:{ref.name}:pull")
        basic = self.auth.basic(ref.registry)
        headers = {"Authorization": basic} if basic else {}
        with client.stream("GET", realm, params=params, headers=headers) as r:
            if r.status_code >= 400:
                raise _answer_error(r, ref.registry, where, what="token ", hint=self._hint(r, ref))
            body = _json(_read_limited(r, where), where, "token answer")
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{where}: registry {ref.registry} gave no token")
        with self._lock:
            self._tokens[(ref.registry, ref.name)] = token


@final
class BlobStream:
    """A blob's bytes from a streamed response; more than `limit` (when not 0) is refused."""

    def __init__(self, response: httpx.Response, *, limit: int, where: str) -> None:
        self.chunks = response.iter_raw(_BLOCK)
        self.buffer = b""
        self.count = 0
        self.limit = limit
        self.where = where
        self.registry = response.url.netloc.decode()

    def read(self, n: int = -1) -> bytes:
        with _translated(self.registry, self.where):
            while n < 0 or len(self.buffer) < n:
                chunk = next(self.chunks, b"")
                if not chunk:
                    break
                self.count += len(chunk)
                if self.limit and self.count > self.limit:
                    raise InvalidImageError(f"{self.where}: more than its {self.limit} bytes")
                self.buffer += chunk
        if n < 0:
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def readable(self) -> bool:
        return True


@contextmanager
def _translated(registry: str, where: str) -> Iterator[None]:
    """httpx's failures as `RegistryError`s that say which registry and what happened."""
    import httpx

    try:
        yield
    except GardenError:
        raise
    except httpx.TimeoutException as e:
        raise RegistryError(f"{where}: registry {registry} did not answer in time ({e!r})") from e
    except httpx.HTTPError as e:
        hint = ""
        if "SSL" in str(e) or "TLS" in str(e):
            hint = " (a plain-http registry must be named by --insecure-docker-registry)"
        raise RegistryError(f"{where}: registry {registry} unreachable: {e}{hint}") from e


def _answer_error(
    r: httpx.Response, registry: str, where: str, what: str = "", hint: str = ""
) -> GardenError:
    """The registry's error answer (`{"errors": [{"code", "message"}]}`, read up to 64 KiB)
    in our terms."""
    content = b""
    with _translated(registry, where):
        for chunk in r.iter_raw(_BLOCK):
            content += chunk
            if len(content) > _MAX_ERROR:
                break
    said = content[:500].decode(errors="replace").strip()
    try:
        errors = json.loads(content).get("errors") or []
        said = "; ".join(f"{x.get('code', '')}: {x.get('message', '')}" for x in errors) or said
    except (ValueError, AttributeError):
        pass
    message = f"{where}: registry {registry} answered {what}{r.status_code}: {said}{hint}"
    if r.status_code == 404:
        return ImageNotFoundError(message)
    return RegistryError(message)


def _read_limited(r: httpx.Response, where: str) -> bytes:
    data = b""
    for chunk in r.iter_raw(_BLOCK):
        data += chunk
        if len(data) > _MAX_JSON:
            raise InvalidImageError(f"{where}: a manifest or config larger than 16 MiB")
    return data


def _json(data: bytes, where: str, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise InvalidImageError(f"{where}: the {what} is not JSON: {e}") from e
