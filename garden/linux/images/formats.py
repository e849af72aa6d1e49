"""Reading images on disk: an OCI image layout (a directory, or a tar of one) and a docker
archive (what `docker save` writes), down to an `ImageManifest` and a way to read each layer's
blob. Nothing is unpacked here and the files are only read.

Blocking: call these in a worker thread. Every failure is `ImageNotFoundError` (the path or tag
is not there) or `InvalidImageError` (it is there but not an image we can read).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, NamedTuple

from garden.errors import ImageNotFoundError, InvalidImageError
from garden.images.model import (
    GZIP_TYPES,
    TAR_TYPES,
    ZSTD_TYPES,
    ImageConfig,
    ImageManifest,
    LayerRef,
)
from garden.images.uri import ImageSource
from garden.linux.images.unpack import LayerError, member_path

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
REF_NAME = "org.opencontainers.image.ref.name"
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_MAX_JSON = 16 << 20
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(
    platform.machine(), platform.machine()
)


class _Span(NamedTuple):
    offset: int
    size: int


class ImageFiles:
    """The files of an image: a directory, or the members of an (uncompressed) tar, read
    without unpacking it (each open gets its own file handle, so threads may share it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.spans: dict[str, _Span] | None = None
        try:
            os.stat(path)
        except FileNotFoundError:
            raise ImageNotFoundError(f"no image at {path}") from None
        except OSError as e:
            raise InvalidImageError(f"cannot read the image at {path}: {e.strerror}") from e
        if not os.path.isdir(path):
            self.spans = _tar_index(path)
        self.stamp = stamp(path)

    def exists(self, name: str) -> bool:
        if self.spans is not None:
            return name in self.spans
        return os.path.isfile(os.path.join(self.path, name))

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        try:
            if self.spans is None:
                with open(os.path.join(self.path, name), "rb") as f:
                    yield f
                return
            span = self.spans.get(name) or _missing(name)
            with open(self.path, "rb") as f:
                f.seek(span.offset)
                yield _Bounded(f, span.size)  # type: ignore[misc]
        except FileNotFoundError:
            raise InvalidImageError(f"image {self.path}: {name} is missing") from None

    def read_json(self, name: str) -> Any:
        with self.open(name) as f:
            data = f.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise InvalidImageError(f"image {self.path}: {name} is larger than 16 MiB")
        try:
            return json.loads(data)
        except ValueError as e:
            raise InvalidImageError(f"image {self.path}: {name} is not JSON: {e}") from e

    def read_blob_json(self, digest: str) -> Any:
        """A JSON blob, checked against its digest."""
        name = blob_name(digest)
        with self.open(name) as f:
            data = f.read(_MAX_JSON + 1)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise InvalidImageError(f"image {self.path}: blob {digest} does not match its digest")
        return json.loads(data)


def _missing(name: str) -> _Span:
    raise FileNotFoundError(name)


class _Bounded:
    """At most `size` bytes of `f` from where it stands."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readable(self) -> bool:
        return True


def _tar_index(path: str) -> dict[str, _Span]:
    """Where each regular member's bytes are (links resolved to their target's bytes)."""
    spans: dict[str, _Span] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                try:
                    name = member_path(m.name)
                except LayerError as e:
                    raise InvalidImageError(f"image {path}: {e}") from e
                if name is None:
                    continue
                if m.isreg():
                    spans[name] = _Span(m.offset_data, m.size)
                elif m.issym():
                    links[name] = os.path.normpath(os.path.join(os.path.dirname(name), m.linkname))
                elif m.islnk():
                    links[name] = member_path(m.linkname) or ""
    except (tarfile.TarError, OSError) as e:
        raise InvalidImageError(f"image {path} is not a readable tar: {e}") from e
    for name, target in links.items():
        for _ in range(8):
            if target in spans or target not in links:
                break
            target = links[target]
        if target in spans:
            spans[name] = spans[target]
    return spans


def stamp(path: str) -> tuple[int, int, int, int] | None:
    """What changes when the image at `path` changes (the tar, or a layout's index.json);
    None when it is not there. One or two stats, cheap enough for the event loop."""
    try:
        st = os.stat(path)
        if os.path.isdir(path):
            st = os.stat(os.path.join(path, "index.json"))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def blob_name(digest: str) -> str:
    if not DIGEST_RE.fullmatch(digest):
        raise InvalidImageError(f"unsupported or malformed digest {digest!r}")
    return "blobs/sha256/" + digest[len("sha256:") :]


def read_image(source: ImageSource) -> tuple[ImageManifest, ImageFiles]:
    """The image `source` names, and its files for reading the layers."""
    if source.kind == "docker":
        raise InvalidImageError(f"{source.uri()}: a registry image (the store pulls those)")
    files = ImageFiles(source.path)
    if source.kind == "docker-archive":
        return _docker_archive(files, source), files
    if not files.exists("index.json"):
        raise InvalidImageError(f"{source.uri()} is not an OCI image layout (no index.json)")
    return _oci(files, source), files


def _oci(files: ImageFiles, source: ImageSource) -> ImageManifest:
    index = files.read_json("index.json")
    manifests = _list(index, "manifests", files.path)
    chosen = _choose(manifests, source, lambda d: _annotation(d, REF_NAME))
    desc, tags = chosen
    digest = _str(desc, "digest", files.path)
    manifest = files.read_blob_json(digest)
    for _ in range(2):
        if manifest.get("mediaType") not in _INDEX_TYPES and "manifests" not in manifest:
            break
        digest = _platform_manifest(_list(manifest, "manifests", files.path), files.path)
        manifest = files.read_blob_json(digest)
    config = files.read_blob_json(_str(_dict(manifest, "config", files.path), "digest", files.path))
    return image_of(manifest, config, digest=digest, source=source, tags=tags, where=files.path)


def config_digest(manifest: Any, where: str) -> str:
    """The digest of an image manifest's config blob."""
    return _str(_dict(manifest, "config", where), "digest", where)


def image_of(
    manifest: Any, config: Any, *, digest: str, source: ImageSource, tags: list[str], where: str
) -> ImageManifest:
    """An image manifest (OCI or Docker v2 schema 2) and its config, as the store keeps it;
    `where` names the image in errors."""
    diff_ids = _diff_ids(config, where)
    layer_descs = _list(manifest, "layers", where)
    if len(layer_descs) != len(diff_ids):
        raise InvalidImageError(
            f"image {where}: {len(layer_descs)} layers but {len(diff_ids)} diff_ids"
        )
    layers = []
    for d, diff_id in zip(layer_descs, diff_ids, strict=True):
        media = str(d.get("mediaType", "application/vnd.oci.image.layer.v1.tar+gzip"))
        if media not in GZIP_TYPES | ZSTD_TYPES | TAR_TYPES:
            raise InvalidImageError(f"image {where}: unsupported layer type {media}")
        blob = _str(d, "digest", where)
        blob_name(blob)
        size = d.get("size", 0)
        layers.append(
            LayerRef(
                diff_id=diff_id,
                blob=blob,
                media_type=media,
                size=size if isinstance(size, int) and size >= 0 else 0,
            )
        )
    return ImageManifest(
        digest=digest, source=source.uri(), tags=tags, layers=layers, config=_config(config)
    )


def is_index(manifest: Any) -> bool:
    """Whether a manifest is a list of per-platform manifests (OCI index, Docker list)."""
    return isinstance(manifest, dict) and (
        manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest
    )


def platform_manifest(index: Any, where: str) -> str:
    """The digest of the `linux/<this machine's arch>` manifest of an index."""
    return _platform_manifest(_list(index, "manifests", where), where)


def _docker_archive(files: ImageFiles, source: ImageSource) -> ImageManifest:
    entries = files.read_json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise InvalidImageError(f"{source.uri()}: manifest.json lists no image")

    def tags_of(entry: Any) -> list[str]:
        return [str(t) for t in (entry.get("RepoTags") or [])]

    def matches(entry: Any) -> list[str]:
        return tags_of(entry)

    entry, _ = _choose(entries, source, matches, docker=True)
    config_name = _path(_str(entry, "Config", files.path), files.path)
    with files.open(config_name) as f:
        raw = f.read(_MAX_JSON)
    config = json.loads(raw)
    diff_ids = _diff_ids(config, files.path)
    paths = [_path(str(p), files.path) for p in _list(entry, "Layers", files.path)]
    if len(paths) != len(diff_ids):
        raise InvalidImageError(
            f"image {files.path}: {len(paths)} layers, {len(diff_ids)} diff_ids"
        )
    layers = []
    for p, diff_id in zip(paths, diff_ids, strict=True):
        with files.open(p) as f:
            magic = f.read(4)
        if magic[:2] == b"\x1f\x8b":
            media = "application/vnd.docker.image.rootfs.diff.tar.gzip"
        elif magic == b"\x28\xb5\x2f\xfd":
            media = "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            media = "application/vnd.docker.image.rootfs.diff.tar"
        # The blob's own digest is not in the archive: `blob` holds the member's path and
        # only the diff id (the uncompressed tar's digest) is verified.
        layers.append(LayerRef(diff_id=diff_id, blob="path:" + p, media_type=media))
    return ImageManifest(
        digest="sha256:" + hashlib.sha256(raw).hexdigest(),
        source=source.uri(),
        tags=tags_of(entry),
        layers=layers,
        config=_config(config),
    )


def _choose(
    items: list[Any],
    source: ImageSource,
    names: Callable[[Any], list[str] | str],
    docker: bool = False,
) -> tuple[Any, list[str]]:
    def as_list(item: Any) -> list[str]:
        found = names(item)
        return [found] if isinstance(found, str) else found

    if source.tag:
        wanted = {source.tag}
        if docker and ":" not in source.tag.rpartition("/")[2]:
            wanted.add(source.tag + ":latest")
        for item in items:
            if wanted & set(as_list(item)):
                return item, [t for t in as_list(item) if t]
        raise ImageNotFoundError(f"{source.uri()}: no image tagged {source.tag!r}")
    if len(items) == 1:
        return items[0], [t for t in as_list(items[0]) if t]
    for item in items:
        if "latest" in as_list(item):
            return item, [t for t in as_list(item) if t]
    raise ImageNotFoundError(f"{source.uri()} holds {len(items)} images: name one with :tag")


def _platform_manifest(manifests: list[Any], path: str) -> str:
    for d in manifests:
        p = d.get("platform") or {}
        if p.get("os", "linux") == "linux" and p.get("architecture", _ARCH) == _ARCH:
            return _str(d, "digest", path)
    raise ImageNotFoundError(f"image {path}: no manifest for linux/{_ARCH}")


def _config(config: Any) -> ImageConfig:
    c = config.get("config") or {}
    env = c.get("Env") or []
    return ImageConfig(
        env=[str(e) for e in env if isinstance(e, str) and "=" in e],
        working_dir=str(c.get("WorkingDir") or ""),
        user=str(c.get("User") or ""),
    )


def _diff_ids(config: Any, path: str) -> list[str]:
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        raise InvalidImageError(f"image {path}: its config has no rootfs.diff_ids")
    for i in ids:
        if not isinstance(i, str) or not DIGEST_RE.fullmatch(i):
            raise InvalidImageError(f"image {path}: bad diff_id {i!r}")
    return list(ids)


def _annotation(desc: Any, key: str) -> str:
    return str((desc.get("annotations") or {}).get(key, ""))


def _list(obj: Any, key: str, path: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list) or not all(isinstance(v, dict | str) for v in value):
        raise InvalidImageError(f"image {path}: {key} is missing or not a list")
    return value


def _dict(obj: Any, key: str, path: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, dict):
        raise InvalidImageError(f"image {path}: {key} is missing")
    return value


def _str(obj: Any, key: str, path: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value:
        raise InvalidImageError(f"image {path}: {key} is missing")
    return value


def _path(name: str, path: str) -> str:
    try:
        rel = member_path(name)
    except LayerError as e:
        raise InvalidImageError(f"image {path}: {e}") from e
    if rel is None:
        raise InvalidImageError(f"image {path}: empty file name in manifest.json")
    return rel
