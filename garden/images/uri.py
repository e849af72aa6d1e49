"""The `rootfs` grammar of a create: every accepted form is parsed and checked here, and only
here, before anything is recorded or built (docs/images.md).

| form | meaning |
|---|---|
| `/abs/dir`, `raw:///abs/dir` | a host directory, the read-only lower layer |
| `oci:///abs/layout[:tag]` | an OCI image layout; no tag: its only image, else `latest` |
| `oci-archive:///abs/file.tar[:tag]` | the same layout in a tar |
| `docker-archive:///abs/file.tar[:name:tag]` | what `docker save` writes |
| `docker:///name[#tag]`, `docker://host[:port]/name[#tag]` | a registry image (`:tag`, `@digest`) |

A syntax error is an `InvalidRequestError` (400); a path that is not there is left to the
reader of the image, which answers `ImageNotFoundError` (404).
"""

from __future__ import annotations

import posixpath
import re
from typing import Literal

import msgspec

from garden.errors import InvalidRequestError

ImageKind = Literal["oci", "oci-archive", "docker-archive", "docker"]
IMAGE_KINDS: tuple[ImageKind, ...] = ("oci", "oci-archive", "docker-archive", "docker")

_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/@+-]{0,255}")
_NAME_RE = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
# A registry tag (distribution's grammar) and a manifest digest.
_DOCKER_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


class HostDir(msgspec.Struct, frozen=True, kw_only=True):
    """A directory on the host (not checked for existence here)."""

    path: str


class ImageSource(msgspec.Struct, frozen=True, kw_only=True):
    """An image: where it is (`path` for files, `registry`/`name` for docker://) and which one
    of the images there (`tag`, empty for the default)."""

    kind: ImageKind
    path: str = ""
    tag: str = ""
    registry: str = ""
    name: str = ""

    def uri(self) -> str:
        """The canonical form, as `GET /images` shows it."""
        if self.kind == "docker":
            where = f"{self.registry}/{self.name}" if self.registry else f"/{self.name}"
            if _DIGEST_RE.fullmatch(self.tag):
                return f"docker://{where}@{self.tag}"
            return f"docker://{where}" + (f"#{self.tag}" if self.tag else "")
        return f"{self.kind}://{self.path}" + (f":{self.tag}" if self.tag else "")


Rootfs = HostDir | ImageSource


def parse_rootfs(value: str) -> Rootfs:
    """Parse a create's `rootfs`; `InvalidRequestError` says what is wrong with it."""
    if not value or "\0" in value or "\n" in value:
        raise InvalidRequestError(f"rootfs {value!r} is empty or contains a NUL or newline")
    scheme, sep, rest = value.partition("://")
    if not sep:
        return _host_dir(value, value)
    if scheme == "raw":
        return _host_dir(rest, value)
    if scheme == "docker":
        return _docker(rest, value)
    if scheme not in IMAGE_KINDS:
        kinds = ", ".join(f"{k}://" for k in ("raw", *IMAGE_KINDS))
        raise InvalidRequestError(f"rootfs {value!r}: unknown scheme {scheme!r} (one of {kinds})")
    path, tag = _split_tag(rest, value)
    return ImageSource(kind=scheme, path=path, tag=tag)


def _host_dir(path: str, value: str) -> HostDir:
    _check_path(path, value)
    return HostDir(path=posixpath.normpath(path))


def _check_path(path: str, value: str) -> None:
    if not path.startswith("/"):
        raise InvalidRequestError(f"rootfs {value!r}: the path must be absolute")
    if ".." in path.split("/"):
        raise InvalidRequestError(f"rootfs {value!r}: the path must not contain '..'")


def _split_tag(rest: str, value: str) -> tuple[str, str]:
    """`/path/to/x[:tag]`: the tag follows the first colon, so the path may not hold one (a
    docker archive's tag may hold `/` and `:`, as in `name/x:v1`)."""
    path, colon, tag = rest.partition(":")
    _check_path(path, value)
    if path.rstrip("/") == "":
        raise InvalidRequestError(f"rootfs {value!r}: no path to an image")
    if colon and not _TAG_RE.fullmatch(tag):
        raise InvalidRequestError(f"rootfs {value!r}: bad tag {tag!r}")
    return posixpath.normpath(path), tag


def _docker(rest: str, value: str) -> ImageSource:
    """`docker:///name[#tag]` (the default registry) or `docker://host[:port]/name[#tag]`;
    `name:tag` and `name@sha256:<hex>` are accepted for the tag too, as Docker writes them. A
    digest is kept as the tag (`sha256:<hex>`): the registry is then asked for exactly it."""
    ref, hash_sign, tag = rest.partition("#")
    registry, slash, name = ref.partition("/")
    if not slash:
        raise InvalidRequestError(
            f"rootfs {value!r}: expected docker:///name or docker://host/name"
        )
    if "@" in name:
        name, _, tag_or_digest = name.partition("@")
        if hash_sign or not _DIGEST_RE.fullmatch(tag_or_digest):
            raise InvalidRequestError(f"rootfs {value!r}: bad digest {tag_or_digest!r}")
        tag = tag_or_digest
    elif ":" in name:
        if hash_sign:
            raise InvalidRequestError(f"rootfs {value!r}: both :tag and #tag")
        name, _, tag = name.partition(":")
        if not tag:
            raise InvalidRequestError(f"rootfs {value!r}: empty tag")
    elif hash_sign and not tag:
        raise InvalidRequestError(f"rootfs {value!r}: empty tag")
    if not _NAME_RE.fullmatch(name):
        raise InvalidRequestError(f"rootfs {value!r}: bad image name {name!r}")
    if tag and not (_DOCKER_TAG_RE.fullmatch(tag) or _DIGEST_RE.fullmatch(tag)):
        raise InvalidRequestError(f"rootfs {value!r}: bad tag {tag!r}")
    if registry and not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", registry):
        raise InvalidRequestError(f"rootfs {value!r}: bad registry {registry!r}")
    return ImageSource(kind="docker", registry=registry, name=name, tag=tag)
