"""Reading one layer blob as an uncompressed tar stream while hashing both the blob (as the
manifest names it) and the tar (the config's diff id), so a layer is verified by the same pass
that unpacks it. gzip through Python's `gzip`, zstd through the `zstd` program.

Blocking: used from the store's worker threads.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, cast

from garden.errors import InvalidImageError
from garden.images.model import GZIP_TYPES, ZSTD_TYPES

_BLOCK = 1 << 20


class HashingReader:
    """Reads through `f`, hashing every byte; `progress(n)` after each read."""

    def __init__(self, f: IO[bytes], progress: Callable[[int], None] | None = None) -> None:
        self.f = f
        self.hash = hashlib.sha256()
        self.count = 0
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        self.count += len(data)
        if self.progress is not None and data:
            self.progress(len(data))
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(_BLOCK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


@contextmanager
def _zstd(raw: IO[bytes]) -> Iterator[IO[bytes]]:
    zstd = shutil.which("zstd")
    if zstd is None:
        raise InvalidImageError(
            "a zstd layer needs the zstd program (scripts/setup.sh installs it)"
        )
    proc = subprocess.Popen([zstd, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def feed() -> None:
        try:
            while data := raw.read(_BLOCK):
                stdin.write(data)
        except OSError:
            pass  # zstd gave up; its exit status says so
        finally:
            stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    finished = False
    try:
        yield proc.stdout
        while proc.stdout.read(_BLOCK):
            pass
        finished = True
    finally:
        proc.stdout.close()
        if not finished:
            proc.kill()  # the unpack failed: stop zstd (its output is no longer read)
        feeder.join()
        status = proc.wait()
    if status != 0:
        raise InvalidImageError(f"zstd could not decompress the layer (status {status})")


@contextmanager
def tar_stream(
    raw: IO[bytes], media_type: str, progress: Callable[[int], None] | None = None
) -> Iterator[tuple[HashingReader, HashingReader]]:
    """(blob reader, tar reader): read the tar from the second; after the `with` body, both
    have been read to their end, so their digests cover the whole blob and tar."""
    blob = HashingReader(raw, progress)
    if media_type in GZIP_TYPES:
        with gzip.GzipFile(fileobj=cast(IO[bytes], blob), mode="rb") as gz:
            tar = HashingReader(cast(IO[bytes], gz))
            yield blob, tar
            tar.drain()
    elif media_type in ZSTD_TYPES:
        with _zstd(cast(IO[bytes], blob)) as out:
            tar = HashingReader(out)
            yield blob, tar
            tar.drain()
    else:
        tar = HashingReader(cast(IO[bytes], blob))
        yield blob, tar
        tar.drain()
    blob.drain()
