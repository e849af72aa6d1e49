"""Plain data about images that the store (`garden/linux/images/`) hands to the actors: an
image's manifest as we keep it, its layers, and what is stored. No live objects."""

from __future__ import annotations

import msgspec

# Media types of layer blobs we can unpack, by compression.
GZIP_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
ZSTD_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
TAR_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)


class LayerRef(msgspec.Struct, frozen=True, kw_only=True):
    """One layer of an image. `diff_id` (sha256 of the uncompressed tar, from the image
    config) names it in the store; `blob` (the digest of the blob as the manifest gives it)
    and `media_type` say how to read and verify it."""

    diff_id: str
    blob: str
    media_type: str
    size: int = 0  # of the blob, when the manifest says


class ImageConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of an image's config that become the container's defaults."""

    env: list[str] = []
    working_dir: str = ""
    user: str = ""


class ImageManifest(msgspec.Struct, frozen=True, kw_only=True):
    """An image as the store keeps it: `digest` is the manifest's (or, for a docker archive,
    the config's) sha256; `layers` bottom first."""

    digest: str
    source: str  # the URI it was imported from, canonical form
    tags: list[str] = []
    layers: list[LayerRef] = []
    config: ImageConfig = ImageConfig()

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]


class StoredLayer(msgspec.Struct, frozen=True, kw_only=True):
    """A layer unpacked in the store: its diff id and the bytes and inodes it takes."""

    diff_id: str
    size: int
    inodes: int = 0


class StoredImage(msgspec.Struct, frozen=True, kw_only=True):
    """An image record of the store and the layers it names."""

    manifest: ImageManifest
    imported_at: float = 0.0


class StoredRef(msgspec.Struct, frozen=True, kw_only=True):
    """A registry tag (`registry/name:tag`) and the stored image it names: what the last pull
    of the tag found, which creates of the tag use without asking the registry."""

    reference: str
    digest: str
