"""The content-addressed layer store under `<state>/images/` (docs/images.md):

    layers/sha256/<hex>/root/         a layer unpacked in overlay form, owned as in its tar
    layers/sha256/<hex>/layer.json    its size and inode count
    shifted/<uid base>/<hex>/         a copy of root/ with every owner shifted by the base,
                                      for unprivileged containers (made on first use)
    images/<hex>.json                 an image record: manifest digest, source, tags, layers
    refs/<sha256 of reference>.json   which stored image a registry tag names (`tag`)
    trash/                            what a prune removed, deleted in the background
    .tmp-*                            work in progress; a start-up `sweep` removes leftovers

Each layer is named by its diff id (the sha256 of its uncompressed tar), so an image read as
an OCI layout and the same image saved by docker share their layers. Everything appears by a
rename of a complete temp dir, so a crash leaves only temp dirs, never a half layer under a
real name, and two servers on one state dir cannot both install one layer. Within this
process a trio lock per layer (and per shifted copy) makes 20 creates of one new image unpack
each layer once: the first unpacks, the others wait for it and find it there.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast, final

import msgspec
import trio

from garden.errors import InvalidImageError, KernelError, RegistryError
from garden.images.model import ImageManifest, LayerRef, StoredImage, StoredLayer, StoredRef
from garden.images.uri import ImageSource
from garden.linux.images.blobs import tar_stream
from garden.linux.images.formats import DIGEST_RE, ImageFiles, blob_name, read_image, stamp
from garden.linux.images.registry import Registries
from garden.linux.images.unpack import LayerError, unpack_layer
from garden.linux.rootfs import shift_owners

TMP_PREFIX = ".tmp-"
_layer_decoder = msgspec.json.Decoder(StoredLayer)
_image_decoder = msgspec.json.Decoder(StoredImage)
_ref_decoder = msgspec.json.Decoder(StoredRef)

Progress = Callable[[int], None]


def _hex(digest: str) -> str:
    return blob_name(digest).rpartition("/")[2]


@final
class LayerStore:
    def __init__(self, root: Path, registries: Registries | None = None) -> None:
        self.root = Path(root)
        self.registries = registries if registries is not None else Registries()
        self.layers_dir = self.root / "layers" / "sha256"
        self.shifted_dir = self.root / "shifted"
        self.images_dir = self.root / "images"
        self.trash_dir = self.root / "trash"
        self.refs_dir = self.root / "refs"
        self._locks: dict[str, trio.Lock] = {}
        self._seen: dict[ImageSource, tuple[object, ImageManifest]] = {}
        self._pull_failures: dict[str, RegistryError] = {}  # the last, by diff id
        self.unpacks = 0  # layers unpacked by this process (tests and the bench read it)

    # -- reading images -------------------------------------------------------------------

    async def inspect(self, source: ImageSource, *, refresh: bool = False) -> ImageManifest:
        """The manifest of the image `source` names. Cached while the image file (or the
        layout's index.json) is unchanged, so a create from a known image reads nothing. A
        registry reference that names a stored image (`stored`) is that image, without asking
        the registry, unless `refresh` (a pull) asks the registry where the tag is now; its
        layers are pulled only when they are not in the store (`unpack`)."""
        if source.kind == "docker":
            if not refresh and (stored := self.stored(source)) is not None:
                return stored
            return await trio.to_thread.run_sync(self.registries.read_image, source)
        seen = self._seen.get(source)
        if seen is not None and seen[0] == stamp(source.path):
            return seen[1]
        manifest, files = await trio.to_thread.run_sync(read_image, source)
        self._seen[source] = (files.stamp, manifest)
        return manifest

    # -- registry references ----------------------------------------------------------------

    def reference(self, source: ImageSource) -> str:
        """The canonical form of a `docker://` reference: `registry/name:tag` or
        `registry/name@sha256:<hex>`, the default registry and `library/` filled in."""
        ref = self.registries.reference(source)
        sep = "@" if DIGEST_RE.fullmatch(ref.reference) else ":"
        return f"{ref.registry}/{ref.name}{sep}{ref.reference}"

    def stored(self, source: ImageSource) -> ImageManifest | None:
        """The stored image a `docker://` reference names (a digest, or a tag a pull
        recorded with `tag`), with every layer in the store; None when there is none. Reads
        only the store, never the registry."""
        ref = self.registries.reference(source)
        digest = ref.reference
        if not DIGEST_RE.fullmatch(digest):
            digest = self._tagged(self.reference(source))
        if not digest:
            return None
        try:
            record = _image_decoder.decode((self.images_dir / f"{_hex(digest)}.json").read_bytes())
        except (OSError, msgspec.DecodeError):
            return None
        if not all(self.has_layer(d) for d in record.manifest.diff_ids):
            return None
        return record.manifest

    def _ref_path(self, reference: str) -> Path:
        return self.refs_dir / (hashlib.sha256(reference.encode()).hexdigest() + ".json")

    def _tagged(self, reference: str) -> str:
        try:
            ref = _ref_decoder.decode(self._ref_path(reference).read_bytes())
        except (OSError, msgspec.DecodeError):
            return ""
        return ref.digest if ref.reference == reference else ""

    async def tag(self, source: ImageSource, digest: str) -> str | None:
        """Record that the `docker://` tag of `source` names the stored image `digest`. The
        digest it named before ("" for none) when this changed it; None when it already
        named `digest` (or `source` is a digest, which names itself)."""
        ref = self.registries.reference(source)
        if source.kind != "docker" or DIGEST_RE.fullmatch(ref.reference):
            return None
        reference = self.reference(source)
        async with self._lock("tag:" + reference):
            previous = self._tagged(reference)
            if previous == digest:
                return None
            data = msgspec.json.encode(StoredRef(reference=reference, digest=digest))
            await trio.to_thread.run_sync(_write_atomic, self._ref_path(reference), data)
            return previous

    # -- layers -----------------------------------------------------------------------------

    def layer_root(self, diff_id: str) -> Path:
        return self.layers_dir / _hex(diff_id) / "root"

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_root(diff_id).is_dir()

    async def unpack(
        self, source: ImageSource, layer: LayerRef, progress: Progress | None = None
    ) -> StoredLayer | None:
        """Make sure the layer is in the store; the layer when this call unpacked it, None
        when it was there (or another task unpacked it meanwhile)."""
        failed_before = self._pull_failures.get(layer.diff_id)
        async with self._lock("unpack:" + layer.diff_id):
            if self.has_layer(layer.diff_id):
                return None
            failed = self._pull_failures.get(layer.diff_id)
            if failed is not None and failed is not failed_before:
                # The pull this create waited for could not reach the registry: answer the
                # same at once rather than each waiter trying (and timing out) in turn.
                raise RegistryError(failed.message)
            try:
                stored = await trio.to_thread.run_sync(self._unpack_sync, source, layer, progress)
            except RegistryError as e:
                self._pull_failures[layer.diff_id] = e
                raise
            self._pull_failures.pop(layer.diff_id, None)
            self.unpacks += 1
            return stored

    def _unpack_sync(
        self, source: ImageSource, layer: LayerRef, progress: Progress | None
    ) -> StoredLayer:
        dest = self.layers_dir / _hex(layer.diff_id)
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.layers_dir / f"{TMP_PREFIX}{_hex(layer.diff_id)[:16]}-{os.urandom(4).hex()}"
        tmp.mkdir(mode=0o755)
        try:
            (tmp / "root").mkdir(mode=0o755)
            with (
                self._open_blob(source, layer) as raw,
                tar_stream(raw, layer.media_type, progress) as (blob, tar),
            ):
                done = unpack_layer(tar, tmp / "root")  # type: ignore[arg-type]
            if tar.digest() != layer.diff_id:
                raise InvalidImageError(
                    f"layer {layer.diff_id} of {source.uri()}: its tar has digest {tar.digest()}"
                )
            if layer.blob.startswith("sha256:") and blob.digest() != layer.blob:
                raise InvalidImageError(
                    f"layer blob {layer.blob} of {source.uri()}: read digest {blob.digest()}"
                )
            stored = StoredLayer(diff_id=layer.diff_id, size=done.bytes, inodes=done.inodes)
            (tmp / "layer.json").write_bytes(msgspec.json.encode(stored))
            _rename_into_place(tmp, dest)
            return stored
        except LayerError as e:
            raise InvalidImageError(f"layer {layer.diff_id} of {source.uri()}: {e}") from e
        except (tarfile.TarError, EOFError) as e:
            raise InvalidImageError(f"layer {layer.diff_id} of {source.uri()}: bad tar: {e}") from e
        except (gzip.BadGzipFile, zlib.error) as e:
            # BadGzipFile is an OSError, but it is the blob's fault, not the machine's.
            raise InvalidImageError(f"layer {layer.blob} of {source.uri()}: bad gzip: {e}") from e
        except OSError as e:
            raise KernelError(f"unpack layer {layer.diff_id} into {tmp}", e) from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @contextmanager
    def _open_blob(self, source: ImageSource, layer: LayerRef) -> Iterator[IO[bytes]]:
        """The layer's blob: pulled from the registry, or read from the image's files."""
        if source.kind == "docker":
            with self.registries.open_blob(source, layer) as stream:
                yield cast(IO[bytes], stream)
            return
        files = ImageFiles(source.path)
        name = layer.blob[5:] if layer.blob.startswith("path:") else blob_name(layer.blob)
        with files.open(name) as raw:
            yield raw

    async def lower_dirs(self, diff_ids: list[str], uid_base: int | None) -> list[Path]:
        """The overlay lower dirs of a container of these layers (bottom first in
        `diff_ids`), top first as overlay wants them; shifted copies for an unprivileged
        container (`uid_base`), made once each."""
        out = []
        for diff_id in reversed(diff_ids):
            root = self.layer_root(diff_id)
            if not root.is_dir():
                raise KernelError(f"find layer {diff_id}", "it is not in the store")
            if uid_base is not None:
                root = await self._shifted(diff_id, uid_base)
            out.append(root)
        return out

    async def _shifted(self, diff_id: str, uid_base: int) -> Path:
        dest = self.shifted_dir / str(uid_base) / _hex(diff_id)
        if dest.is_dir():
            return dest
        async with self._lock(f"shift:{uid_base}:{diff_id}"):
            if not dest.is_dir():
                await trio.to_thread.run_sync(self._shift_sync, diff_id, uid_base, dest)
        return dest

    def _shift_sync(self, diff_id: str, uid_base: int, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f"{TMP_PREFIX}{dest.name[:16]}-{os.urandom(4).hex()}"
        try:
            result = subprocess.run(
                ["cp", "-a", "--reflink=auto", str(self.layer_root(diff_id)), str(tmp)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            if result.returncode != 0:
                raise KernelError(f"copy layer {diff_id}", result.stderr.decode(errors="replace"))
            shift_owners(tmp, uid_base)
            _rename_into_place(tmp, dest)
        except OSError as e:
            raise KernelError(f"shift layer {diff_id} by {uid_base}", e) from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _lock(self, key: str) -> trio.Lock:
        return self._locks.setdefault(key, trio.Lock())

    # -- what is stored ---------------------------------------------------------------------

    def layers(self) -> list[StoredLayer]:
        out = []
        for d in _entries(self.layers_dir):
            try:
                out.append(_layer_decoder.decode((self.layers_dir / d / "layer.json").read_bytes()))
            except (OSError, msgspec.DecodeError):
                continue
        return out

    def images(self) -> list[StoredImage]:
        out = []
        for name in _entries(self.images_dir):
            try:
                out.append(_image_decoder.decode((self.images_dir / name).read_bytes()))
            except (OSError, msgspec.DecodeError):
                continue
        return sorted(out, key=lambda i: i.imported_at)

    def has_image(self, digest: str) -> bool:
        return (self.images_dir / f"{_hex(digest)}.json").exists()

    async def save_image(self, manifest: ImageManifest) -> None:
        """Write (or rewrite, with its latest source and tags) the image's record."""
        record = StoredImage(manifest=manifest, imported_at=time.time())
        path = self.images_dir / f"{_hex(manifest.digest)}.json"
        await trio.to_thread.run_sync(_write_atomic, path, msgspec.json.encode(record))

    def discard(self, image_digests: list[str], diff_ids: list[str]) -> None:
        """Take images and layers out of the store at once (renames into trash/; quick, so
        the caller's view of what is in use cannot change in between); `empty_trash` then
        deletes them. Shifted copies of the layers go too."""
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        moves = [self.images_dir / f"{_hex(d)}.json" for d in image_digests]
        for diff_id in diff_ids:
            moves.append(self.layers_dir / _hex(diff_id))
            moves += [b / _hex(diff_id) for b in _dirs(self.shifted_dir)]
        for path in moves:
            try:
                os.rename(path, self.trash_dir / f"{os.urandom(8).hex()}-{path.name}")
            except FileNotFoundError:
                continue
            except OSError as e:
                raise KernelError(f"remove {path} from the image store", e) from e

    async def empty_trash(self) -> None:
        await trio.to_thread.run_sync(_clear_dir, self.trash_dir)

    async def sweep(self) -> list[str]:
        """Remove what a crash left: temp dirs of unpacks and copies, and the trash.
        Returns the paths of the temp dirs removed."""
        return await trio.to_thread.run_sync(self._sweep_sync)

    def _sweep_sync(self) -> list[str]:
        found = []
        parents = [self.layers_dir, self.images_dir, self.refs_dir, *_dirs(self.shifted_dir)]
        for parent in parents:
            for name in _entries(parent):
                if name.startswith(TMP_PREFIX):
                    path = parent / name
                    shutil.rmtree(path, ignore_errors=True)
                    if path.is_file():
                        path.unlink()
                    found.append(str(path))
        _clear_dir(self.trash_dir)
        return found


def _rename_into_place(tmp: Path, dest: Path) -> None:
    try:
        os.rename(tmp, dest)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        # Another process installed the same content first; ours goes with the temp dir.


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.urandom(4).hex()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _entries(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _dirs(path: Path) -> list[Path]:
    return [path / n for n in _entries(path) if (path / n).is_dir()]


def _clear_dir(path: Path) -> None:
    for name in _entries(path):
        p = path / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
