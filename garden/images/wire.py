"""Wire types of the image routes (`GET /images`, `POST /images`, `POST /images/prune`)."""

from __future__ import annotations

import msgspec


class ImageLayerInfo(msgspec.Struct, frozen=True, kw_only=True):
    diff_id: str
    size: int  # bytes of its files
    inodes: int
    in_use: int  # containers whose rootfs stacks it


class ImageInfo(msgspec.Struct, frozen=True, kw_only=True):
    digest: str
    source: str  # the URI it was last imported from
    tags: list[str]
    layers: list[str]  # diff ids, bottom first
    size: int  # bytes of its layers
    in_use: int  # containers made from it
    imported_at: float


class ImagesReply(msgspec.Struct, frozen=True, kw_only=True):
    images: list[ImageInfo]
    layers: list[ImageLayerInfo]  # every stored layer, also those no image names


class ImportRequest(msgspec.Struct, frozen=True, kw_only=True):
    rootfs: str  # any image URI a create accepts


class PruneReply(msgspec.Struct, frozen=True, kw_only=True):
    images: list[str]  # digests removed
    layers: list[str]  # diff ids removed
    bytes: int  # freed (sizes of the layers' files)


class ImportLine(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of `POST /images`: progress, then the image or an error."""

    layer: int = 0  # index of the layer being read (0-based)
    layers: int = 0
    bytes: int = 0  # of the image's blobs read so far (only layers not yet stored are read)
    size: int = 0  # of the image's blobs, as the manifest says (0 when it does not)
    image: ImageInfo | None = None
    error: dict[str, str] | None = None
