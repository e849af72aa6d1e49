"""Images built by the tests themselves: layer tars from a list of entries (or a tar file on
disk, such as the Debian minbase tarball that scripts/setup.sh builds), and those layers written
as an OCI layout, an OCI archive or a docker archive (what `docker save` writes)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

BUSYBOX = "/bin/busybox"


@dataclass
class Entry:
    """One tar member: kind "file" | "dir" | "symlink" | "hardlink" | "char" | "fifo"."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)


def layer_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, 1_700_000_000
            ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            data = None
            if e.kind == "file":
                ti.size, data = len(e.data), io.BytesIO(e.data)
            elif e.kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif e.kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, e.link
            elif e.kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, e.link
            elif e.kind == "char":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            elif e.kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            tf.addfile(ti, data)
    return buf.getvalue()


def busybox_entries(
    applets: tuple[str, ...] = ("sh", "cat", "ls", "id", "pwd", "env"),
) -> list[Entry]:
    """A minimal root: a static busybox, a few applets as symlinks, passwd/group."""
    data = Path(BUSYBOX).read_bytes()
    entries = [
        Entry("bin", "dir", mode=0o755),
        Entry("bin/busybox", data=data, mode=0o755),
        Entry("etc", "dir", mode=0o755),
        Entry(
            "etc/passwd",
            data=b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        ),
        Entry("etc/group", data=b"root:x:0:\nalice:x:1000:\n"),
        Entry("root", "dir", mode=0o700),
        Entry("tmp", "dir", mode=0o1777),
    ]
    entries += [Entry(f"bin/{a}", "symlink", link="busybox") for a in applets]
    return entries


# A layer: an uncompressed tar in memory, or the path of one on disk (streamed, never read whole).
Layer = bytes | Path


@dataclass
class Image:
    layers: list[Layer]  # uncompressed tars, bottom first
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""

    def config(self) -> bytes:
        cfg: dict[str, Any] = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": self.env, "WorkingDir": self.working_dir, "User": self.user},
            "rootfs": {
                "type": "layers",
                "diff_ids": [layer_digest(layer) for layer in self.layers],
            },
        }
        return json.dumps(cfg).encode()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_digest(layer: Layer) -> str:
    return _file_digest(layer) if isinstance(layer, Path) else sha(layer)


@cache
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _compress(data: bytes, how: str) -> tuple[bytes, str]:
    if how == "gzip":
        return gzip.compress(data, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    if how == "zstd":
        out = subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True)
        return out.stdout, "application/vnd.oci.image.layer.v1.tar+zstd"
    return data, "application/vnd.oci.image.layer.v1.tar"


def write_oci_layout(
    root: Path,
    images: dict[str, Image],
    compress: Literal["gzip", "zstd", "none"] = "gzip",
) -> None:
    """An OCI image layout at `root` holding each image under its tag."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = sha(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    def put_file(path: Path) -> dict[str, Any]:
        """A tar on disk as a blob: linked (or copied) as it is, or gzipped as a stream."""
        if compress == "none":
            digest, dest = layer_digest(path), blobs / layer_digest(path)[7:]
            if not dest.exists():
                try:
                    os.link(path, dest)
                except OSError:
                    shutil.copyfile(path, dest)
            media = "application/vnd.oci.image.layer.v1.tar"
        elif compress == "gzip":
            tmp = blobs / ".gzip-tmp"
            with (
                open(path, "rb") as src,
                open(tmp, "wb") as raw,
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz,
            ):
                shutil.copyfileobj(src, gz, 1 << 20)
            digest = _file_digest(tmp)
            os.replace(tmp, blobs / digest[7:])
            media = "application/vnd.oci.image.layer.v1.tar+gzip"
        else:
            raise ValueError(f"a layer file cannot be compressed with {compress}")
        return {"mediaType": media, "digest": digest, "size": (blobs / digest[7:]).stat().st_size}

    manifests = []
    for tag, image in images.items():
        config = image.config()
        layers = []
        for layer in image.layers:
            if isinstance(layer, Path):
                layers.append(put_file(layer))
                continue
            blob, media = _compress(layer, compress)
            layers.append({"mediaType": media, "digest": put(blob), "size": len(blob)})
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": put(config),
                    "size": len(config),
                },
                "layers": layers,
            }
        ).encode()
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))


def write_oci_archive(path: Path, images: dict[str, Image], compress: str = "gzip") -> None:
    layout = path.with_suffix(".layout")
    write_oci_layout(layout, images, compress)  # type: ignore[arg-type]
    with tarfile.open(path, "w") as tf:
        for name in sorted(os.listdir(layout)):
            tf.add(layout / name, arcname=name)
    shutil.rmtree(layout)


def write_docker_archive(path: Path, images: dict[str, Image]) -> None:
    """`docker save` format: <hex>.json configs, <id>/layer.tar, manifest.json, repositories."""
    with tarfile.open(path, "w") as tf:

        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))

        entries = []
        seen: set[str] = set()
        for tag, image in images.items():
            config = image.config()
            config_name = sha(config)[7:] + ".json"
            add(config_name, config)
            layer_paths = []
            for layer in image.layers:
                layer_id = layer_digest(layer)[7:]
                if layer_id not in seen:
                    if isinstance(layer, Path):
                        tf.add(layer, arcname=f"{layer_id}/layer.tar")
                    else:
                        add(f"{layer_id}/layer.tar", layer)
                    seen.add(layer_id)
                layer_paths.append(f"{layer_id}/layer.tar")
            entries.append({"Config": config_name, "RepoTags": [tag], "Layers": layer_paths})
        add("manifest.json", json.dumps(entries).encode())
