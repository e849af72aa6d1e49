"""Disk limits on a container's writable layer, behind `LayerQuota`.

This host's kernel has neither XFS nor ext4 project quotas, so `LoopImageQuota` gives each
container with a disk limit a filesystem of its own: a sparse ext4 image on a loop device,
mounted at `<container>/layer`, which holds the overlay's upper/ and work/. A write past the
limit fails with ENOSPC inside the container, whoever writes.

The image is made larger than the limit (headroom, so a raise needs no resize), and a hidden
ballast takes up the difference: a preallocated file for bytes and empty files for inodes, in
`.garden/` beside upper/ (the container cannot see it). Lowering a limit grows the ballast,
raising shrinks it; both take effect at once on the mounted filesystem. A raise past the
headroom grows the image online (resize2fs), which needs CAP_SYS_RESOURCE; without it the raise
is refused with a clear error. What the container uses is the filesystem's use minus what was
there before it started (`layer.json`) minus the ballast.

A host with project quotas would implement `LayerQuota` with a project id per container's
upper dir instead; `LinuxContainers` only sees the protocol.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Protocol, final

import trio

from garden.errors import ConflictError, KernelError, MountError
from garden.linux import loop
from garden.linux.plan import DiskQuota, DiskUsage
from garden.linux.rootfs import mount_sync, unmount

log = logging.getLogger("garden.linux")

IMAGE = "layer.img"
LAYER = "layer"
BASE_FILE = "layer.json"
HIDDEN = ".garden"
BLOCK = 4096
INODE_SIZE = 256
MIN_HEADROOM = 1 << 30
MAX_HEADROOM = 16 << 30
# Lowering the inode limit by more than this below the free inodes is refused: each ballast
# inode is a file to create.
MAX_INODE_BALLAST = 65536
DETACH_TIMEOUT = 2.0
_OWN_INODES = 64  # root, lost+found, .garden, upper, work, mount points: counted in the base


class LayerQuota(Protocol):
    async def create(self, container_path: Path, quota: DiskQuota) -> Path:
        """Make the limited filesystem; return the directory for the overlay's upper/work."""
        ...

    async def limit(self, container_path: Path, quota: DiskQuota) -> None:
        """Enforce `quota` from now on. The first call, once the server has put its own files
        in the container, records what the layer holds as not the container's use; later
        calls change the limit. `ConflictError` if the container already uses more or the
        limit cannot be reached."""
        ...

    def usage(self, container_path: Path) -> DiskUsage | None:
        """What the container has written; None when the layer is not mounted. Blocking (a
        few syscalls): call it from a worker thread."""
        ...

    async def release(self, container_path: Path) -> None:
        """Unmount and detach; idempotent (the image goes with the container's directory)."""
        ...

    def leftovers(self, containers_dir: Path) -> dict[str, str]:
        """{loop device: container id} of attached images under `containers_dir`."""
        ...


def _image_plan(quota: DiskQuota, host_free: int) -> tuple[int, int | None, int]:
    """(image size, inode count for mkfs or None for ext4's default, capacity in bytes)."""
    if quota.bytes is not None:
        capacity = quota.bytes + min(max(quota.bytes, MIN_HEADROOM), MAX_HEADROOM)
    else:
        capacity = max(host_free, MIN_HEADROOM)  # inodes only: bytes as the host allows
    inodes = quota.inodes + _OWN_INODES if quota.inodes is not None else None
    table = (inodes if inodes is not None else capacity // 16384) * INODE_SIZE
    # ext4 keeps min(2%, 16 MiB) back for itself; bitmaps and descriptors are small.
    size = capacity + table + min(capacity // 50, 16 << 20) + capacity // 256 + (4 << 20)
    return -(-size // BLOCK) * BLOCK, inodes, capacity


def _mkfs_argv(image: Path, inodes: int | None) -> list[str]:
    binary = shutil.which("mke2fs") or "/sbin/mke2fs"
    argv = [binary, "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-m", "0"]
    # No journal (the layer does not outlive a host crash anyway) and no resize inode: mkfs
    # in ~5 ms whatever the size. Lazy inode tables stay unwritten (the mount says
    # noinit_itable), so the sparse image stays small.
    argv += ["-O", "^has_journal,^resize_inode", "-E", "nodiscard,lazy_itable_init=1"]
    if inodes is not None:
        argv += ["-N", str(inodes)]
    return [*argv, str(image)]


@final
class LoopImageQuota:
    """`LayerQuota` with one sparse ext4 image per container on a loop device."""

    async def create(self, container_path: Path, quota: DiskQuota) -> Path:
        image, layer = container_path / IMAGE, container_path / LAYER
        host = os.statvfs(container_path)
        size, inodes, _capacity = _image_plan(quota, host.f_bavail * host.f_frsize)
        await trio.to_thread.run_sync(_make_image, image, size, layer)
        result = await trio.run_process(
            _mkfs_argv(image, inodes),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if result.returncode != 0:
            err = (result.stderr or result.stdout).decode(errors="replace").strip()
            raise KernelError(f"mkfs.ext4 {image}", err)
        await trio.to_thread.run_sync(_attach_and_mount, image, layer)
        return layer

    async def limit(self, container_path: Path, quota: DiskQuota) -> None:
        await trio.to_thread.run_sync(_limit_sync, container_path, quota)

    def usage(self, container_path: Path) -> DiskUsage | None:
        return _usage_sync(container_path)

    async def release(self, container_path: Path) -> None:
        image = container_path / IMAGE
        await unmount(container_path / LAYER)
        # Autoclear detaches the device once its filesystem is gone, but the kernel may do it
        # a moment after the unmount returns (from a work item): ask, then wait a bounded time.
        deadline = trio.current_time() + DETACH_TIMEOUT
        while (dev := await trio.to_thread.run_sync(loop.device_of, image)) is not None:
            loop.detach(dev)
            if trio.current_time() >= deadline:
                log.warning("loop-still-attached device=%s image=%s", dev, image)
                return
            await trio.sleep(0.005)

    def leftovers(self, containers_dir: Path) -> dict[str, str]:
        prefix = os.path.realpath(containers_dir).rstrip("/") + "/"
        return {
            dev: backing[len(prefix) :].split("/")[0]
            for dev, backing in loop.backed_under(containers_dir).items()
        }


def _make_image(image: Path, size: int, layer: Path) -> None:
    try:
        with open(image, "xb") as f:
            f.truncate(size)  # sparse
        layer.mkdir(mode=0o711)
    except OSError as e:
        raise KernelError(f"create disk image {image}", e) from e


def _attach_and_mount(image: Path, layer: Path) -> None:
    dev, fd = loop.attach(image)
    try:
        mount_sync(dev, layer, "ext4", "noinit_itable")
    finally:
        os.close(fd)  # mounted: the device now lives as long as the mount; else it detaches
    try:
        hidden = layer / HIDDEN
        hidden.mkdir(mode=0o700)
        (hidden / "inodes").mkdir(mode=0o700)
        (hidden / "ballast").touch(mode=0o600)
        for d in ("upper", "work", "work/work"):
            (layer / d).mkdir(mode=0o755)
    except OSError as e:
        raise MountError(f"prepare disk layer {layer}", e) from e


class _Layer:
    """One look at a mounted layer: the filesystem's counters, the ballast, the base."""

    def __init__(self, container_path: Path) -> None:
        self.layer = container_path / LAYER
        self.base_file = container_path / BASE_FILE
        self.ballast = self.layer / HIDDEN / "ballast"
        self.inode_dir = self.layer / HIDDEN / "inodes"
        self.refresh()

    def refresh(self) -> None:
        st = os.statvfs(self.layer)
        self.block = st.f_frsize
        self.used_bytes_all = (st.f_blocks - st.f_bfree) * st.f_frsize
        self.free_bytes = st.f_bavail * st.f_frsize
        self.used_inodes_all = st.f_files - st.f_ffree
        self.free_inodes = st.f_favail
        self.ballast_bytes = os.stat(self.ballast).st_blocks * 512
        self.ballast_names = sorted(os.listdir(self.inode_dir), key=_ballast_index)

    def base(self) -> tuple[int, int]:
        """What was used before the container wrote anything (recorded on the first look)."""
        try:
            raw = json.loads(self.base_file.read_text())
            return int(raw["bytes"]), int(raw["inodes"])
        except FileNotFoundError:
            pass
        base = (
            self.used_bytes_all - self.ballast_bytes,
            self.used_inodes_all - len(self.ballast_names),
        )
        tmp = self.base_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bytes": base[0], "inodes": base[1]}))
        os.replace(tmp, self.base_file)
        return base

    def usage(self) -> DiskUsage:
        base_bytes, base_inodes = self.base()
        return DiskUsage(
            bytes_used=max(0, self.used_bytes_all - base_bytes - self.ballast_bytes),
            inodes_used=max(0, self.used_inodes_all - base_inodes - len(self.ballast_names)),
        )


def _ballast_index(name: str) -> int:
    return int(name) if name.isdigit() else -1


def _is_mounted(layer: Path) -> bool:
    return os.path.ismount(layer)


def _usage_sync(container_path: Path) -> DiskUsage | None:
    if not _is_mounted(container_path / LAYER):
        return None
    return _Layer(container_path).usage()


def _limit_sync(container_path: Path, quota: DiskQuota) -> None:
    if not _is_mounted(container_path / LAYER):
        raise ConflictError("the container's disk layer is not mounted")
    state = _Layer(container_path)
    used = state.usage()
    if quota.bytes is not None and used.bytes_used > quota.bytes:
        raise ConflictError(
            f"disk limit of {quota.bytes} bytes is below the {used.bytes_used} bytes in use"
        )
    if quota.inodes is not None and used.inodes_used > quota.inodes:
        raise ConflictError(
            f"inode limit of {quota.inodes} is below the {used.inodes_used} inodes in use"
        )
    # Inodes first: the ballast files' directory entries take blocks.
    _set_inode_ballast(state, quota.inodes, used.inodes_used)
    _set_byte_ballast(state, quota.bytes, used.bytes_used)


def _set_inode_ballast(state: _Layer, limit: int | None, used: int) -> None:
    names = state.ballast_names
    if limit is None:
        for name in names:
            os.unlink(state.inode_dir / name)
        return
    excess = state.free_inodes - (limit - used)
    if excess > MAX_INODE_BALLAST:
        raise ConflictError(
            f"cannot lower the inode limit by {excess} below the free inodes of the layer "
            f"(at most {MAX_INODE_BALLAST}); set inode_hard when creating the container"
        )
    if excess < 0 and -excess > len(names):
        capacity = used + state.free_inodes + len(names)
        raise ConflictError(
            f"inode limit {limit} is above the layer's capacity of {capacity} inodes, fixed "
            "when the container was created"
        )
    if excess > 0:
        start = _ballast_index(names[-1]) + 1 if names else 0
        for i in range(start, start + excess):
            fd = os.open(state.inode_dir / str(i), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
    else:
        for name in names[len(names) + excess :]:
            os.unlink(state.inode_dir / name)
    state.refresh()


def _set_byte_ballast(state: _Layer, limit: int | None, used: int) -> None:
    fd = os.open(state.ballast, os.O_RDWR | os.O_CLOEXEC)
    try:
        if limit is None:
            os.ftruncate(fd, 0)
            return
        target_free = (limit - used) // state.block * state.block
        # The ballast's own extent blocks count too: settle in a few rounds.
        for _ in range(6):
            delta = state.free_bytes - target_free
            if delta == 0:
                return
            size = os.fstat(fd).st_size
            new = size + delta
            if new < 0:
                _grow_or_refuse(state, limit, -new)
                continue
            if new > size:
                try:
                    os.posix_fallocate(fd, 0, new)
                except OSError as e:
                    os.ftruncate(fd, size)
                    if e.errno == errno.ENOSPC:
                        raise ConflictError(
                            "the container wrote more while its disk limit was being lowered"
                        ) from e
                    raise KernelError(f"allocate {state.ballast}", e) from e
            else:
                os.ftruncate(fd, new)
            state.refresh()
        if state.free_bytes > target_free:
            raise KernelError(f"limit {state.layer}", "the ballast did not settle")
    finally:
        os.close(fd)


def _grow_or_refuse(state: _Layer, limit: int, missing: int) -> None:
    """The image is too small for `limit`: grow it online where the host allows it."""
    container_path = state.layer.parent
    image = container_path / IMAGE
    dev = loop.device_of(image)
    grow_by = missing + missing // 32 + (16 << 20)
    if dev is not None:
        old = os.stat(image).st_size
        os.truncate(image, old + -(-grow_by // BLOCK) * BLOCK)
        loop.set_capacity(dev)
        result = subprocess.run(
            [shutil.which("resize2fs") or "/sbin/resize2fs", dev],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=60,
        )
        if result.returncode == 0:
            state.refresh()
            return
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
    else:
        reason = ["the layer's loop device is gone"]
    capacity = state.free_bytes + state.ballast_bytes + state.usage().bytes_used
    raise ConflictError(
        f"cannot raise the disk limit to {limit} bytes: the layer holds at most {capacity} "
        f"without an online resize, which failed here ({'; '.join(reason)}; it needs "
        "CAP_SYS_RESOURCE)"
    )
