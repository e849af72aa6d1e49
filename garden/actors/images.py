"""Images for the supervisor: importing an image for a create (its layers unpacked once into
the store, each new layer and image recorded as an event), listing what is stored, and
pruning what no container uses.

A layer can be in use before any container records it: a create holds ("pins") its image's
layers from the moment it reads the manifest until its `ContainerCreateStarted` is in the
state. A prune takes out of the store, without awaiting in between, exactly the layers that
neither a container in the state nor a pin names, so it can never remove one in use.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import final

import trio

from garden.actors.ports import ImageStore
from garden.events import schema as ev
from garden.events.journal import Journal
from garden.events.state import ServerState
from garden.images.model import ImageManifest
from garden.images.uri import ImageSource
from garden.images.wire import ImageInfo, ImageLayerInfo, ImagesReply, PruneReply

log = logging.getLogger("garden.images")


@final
class ImportProgress:
    """How far an import is, written by the unpacking threads, read by whoever shows it."""

    def __init__(self) -> None:
        self.manifest: ImageManifest | None = None
        self.layer = 0  # index of the layer being read
        self.layer_bytes = 0  # of its blob read so far
        self.total_bytes = 0  # of every blob read so far

    def add(self, n: int) -> None:
        self.layer_bytes += n
        self.total_bytes += n


@final
class ImageService:
    def __init__(self, store: ImageStore, state: ServerState, journal: Journal) -> None:
        self.store = store
        self.state = state
        self.journal = journal
        self._pinned_layers: Counter[str] = Counter()
        self._pinned_images: Counter[str] = Counter()
        self._saving: dict[str, trio.Lock] = {}  # one writer of each image's record

    async def recover(self) -> None:
        """At start-up: remove what a crashed unpack or copy left, and record it."""
        for path in await self.store.sweep():
            log.warning("image-sweep path=%s", path)
            await self.journal.record(ev.ResourceSwept(kind="image-temp", name=path))

    @asynccontextmanager
    async def use(
        self,
        source: ImageSource,
        origin: ev.Origin,
        progress: ImportProgress | None = None,
        *,
        refresh: bool = False,
    ) -> AsyncIterator[ImageManifest]:
        """The image, its layers in the store and pinned for as long as the `with` lasts. A
        `docker://` tag already stored is used as stored, like `docker run`; `refresh` (a
        pull: `POST /images`) asks the registry where the tag is now."""
        manifest = await self.store.inspect(source, refresh=refresh)
        diff_ids = manifest.diff_ids
        self._pinned_layers.update(diff_ids)
        self._pinned_images[manifest.digest] += 1
        try:
            await self._import(source, manifest, origin, progress)
            if source.kind == "docker":
                await self._tag(source, manifest.digest, origin)
            yield manifest
        finally:
            self._pinned_layers.subtract(diff_ids)
            self._pinned_images[manifest.digest] -= 1
            self._pinned_layers = +self._pinned_layers
            self._pinned_images = +self._pinned_images

    async def _import(
        self,
        source: ImageSource,
        manifest: ImageManifest,
        origin: ev.Origin,
        progress: ImportProgress | None,
    ) -> None:
        if progress is not None:
            progress.manifest = manifest
        for index, layer in enumerate(manifest.layers):
            if progress is not None:
                progress.layer, progress.layer_bytes = index, 0
            stored = await self.store.unpack(
                source, layer, progress.add if progress is not None else None
            )
            if stored is not None:
                log.info("layer-unpacked diff_id=%s size=%d", stored.diff_id, stored.size)
                await self.journal.record(
                    ev.LayerUnpacked(
                        diff_id=stored.diff_id,
                        size=stored.size,
                        inodes=stored.inodes,
                        image=manifest.digest,
                        source=manifest.source,
                    ),
                    origin=origin,
                )
        lock = self._saving.setdefault(manifest.digest, trio.Lock())
        async with lock:
            if self.store.has_image(manifest.digest):
                return
            await self.store.save_image(manifest)
            await self.journal.record(
                ev.ImageImported(
                    digest=manifest.digest,
                    source=manifest.source,
                    tags=list(manifest.tags),
                    layers=manifest.diff_ids,
                ),
                origin=origin,
            )

    async def _tag(self, source: ImageSource, digest: str, origin: ev.Origin) -> None:
        previous = await self.store.tag(source, digest)
        if previous is None:
            return
        reference = self.store.reference(source)
        log.info("image-tagged reference=%s digest=%s previous=%s", reference, digest, previous)
        await self.journal.record(
            ev.ImageTagged(reference=reference, digest=digest, previous=previous), origin=origin
        )

    def listing(self) -> ImagesReply:
        layer_use: Counter[str] = Counter()
        image_use: Counter[str] = Counter()
        for c in self.state.containers.values():
            layer_use.update(c.layers)
            if c.image:
                image_use[c.image] += 1
        layers = {layer.diff_id: layer for layer in self.store.layers()}
        images = [
            ImageInfo(
                digest=i.manifest.digest,
                source=i.manifest.source,
                tags=list(i.manifest.tags),
                layers=i.manifest.diff_ids,
                size=sum(layers[d].size for d in i.manifest.diff_ids if d in layers),
                in_use=image_use[i.manifest.digest],
                imported_at=i.imported_at,
            )
            for i in self.store.images()
        ]
        return ImagesReply(
            images=images,
            layers=[
                ImageLayerInfo(diff_id=d, size=layer.size, inodes=layer.inodes, in_use=layer_use[d])
                for d, layer in sorted(layers.items())
            ],
        )

    async def prune(self, origin: ev.Origin) -> PruneReply:
        """Remove every image and layer that no container (nor a create in flight) uses."""
        used_layers = set(self._pinned_layers)
        used_images = set(self._pinned_images)
        for c in self.state.containers.values():
            used_layers.update(c.layers)
            if c.image:
                used_images.add(c.image)
        images = [i.manifest for i in self.store.images() if i.manifest.digest not in used_images]
        kept = {
            d
            for i in self.store.images()
            if i.manifest.digest in used_images
            for d in i.manifest.diff_ids
        }
        layers = [
            layer
            for layer in self.store.layers()
            if layer.diff_id not in used_layers and layer.diff_id not in kept
        ]
        if not images and not layers:
            return PruneReply(images=[], layers=[], bytes=0)
        # No await between reading what is used and taking the rest out of the store.
        self.store.discard([i.digest for i in images], [layer.diff_id for layer in layers])
        reply = PruneReply(
            images=[i.digest for i in images],
            layers=[layer.diff_id for layer in layers],
            bytes=sum(layer.size for layer in layers),
        )
        await self.journal.record(
            ev.ImagesPruned(images=reply.images, layers=reply.layers), origin=origin
        )
        await self.store.empty_trash()
        log.info("images-pruned images=%d layers=%d", len(images), len(layers))
        return reply
