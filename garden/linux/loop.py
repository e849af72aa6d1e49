"""Loop devices through their ioctls (no `losetup` child per call): attach an image file with
autoclear, so the device detaches itself at the last unmount or close; find the devices whose
backing file lies under a directory; detach them.

An attached device's fd must stay open until the filesystem on it is mounted: with autoclear,
closing the last fd of an unmounted device detaches it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

from garden.errors import KernelError

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_SET_CAPACITY = 0x4C07
LOOP_CLR_FD = 0x4C01
LO_FLAGS_AUTOCLEAR = 4
_NAME_SIZE = 64
_SYS_BLOCK = Path("/sys/block")


def _config(file_fd: int, name: str) -> bytes:
    """struct loop_config: fd, block_size, struct loop_info64, __u64 reserved[8]."""
    info = struct.pack(
        "=5Q4I64s64s32s2Q",
        0, 0, 0, 0, 0,  # device, inode, rdevice, offset, sizelimit
        0, 0, 0, LO_FLAGS_AUTOCLEAR,  # number, encrypt_type, encrypt_key_size, flags
        name.encode()[: _NAME_SIZE - 1], b"", b"",  # file_name, crypt_name, encrypt_key
        0, 0,  # init
    )  # fmt: skip
    return struct.pack("=II", file_fd, 0) + info + bytes(64)


def attach(image: Path) -> tuple[str, int]:
    """Attach `image` to a free loop device (autoclear); return its path and an open fd that
    the caller closes once the device is mounted."""
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError("open /dev/loop-control", e) from e
    try:
        file_fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        os.close(ctl)
        raise KernelError(f"open {image}", e) from e
    try:
        for _ in range(64):  # another process may take the free device between the two calls
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{n}"
            dev_fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(dev_fd, LOOP_CONFIGURE, _config(file_fd, str(image)))
            except OSError as e:
                os.close(dev_fd)
                if e.errno == errno.EBUSY:
                    continue
                raise
            return dev, dev_fd
        raise KernelError(f"attach {image} to a loop device", "every free device was taken")
    except OSError as e:
        raise KernelError(f"attach {image} to a loop device", e) from e
    finally:
        os.close(file_fd)
        os.close(ctl)


def set_capacity(dev: str) -> None:
    """Make the device see its backing file's new size."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
        finally:
            os.close(fd)
    except OSError as e:
        raise KernelError(f"set the capacity of {dev}", e) from e


def detach(dev: str) -> None:
    """Detach `dev`; one still mounted or open is detached by the kernel when released
    (autoclear). Already detached or gone counts as done."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as e:
        raise KernelError(f"open {dev}", e) from e
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
    except OSError as e:
        if e.errno not in (errno.ENXIO, errno.EBUSY):  # not bound / autoclear set
            raise KernelError(f"detach {dev}", e) from e
    finally:
        os.close(fd)


def backed_under(directory: Path) -> dict[str, str]:
    """{device: backing file} of the loop devices whose backing file is under `directory`
    (a deleted backing file still counts: the kernel appends " (deleted)")."""
    prefix = os.path.realpath(directory).rstrip("/") + "/"
    out: dict[str, str] = {}
    try:
        entries = [e.name for e in os.scandir(_SYS_BLOCK) if e.name.startswith("loop")]
    except FileNotFoundError:
        return out
    for name in entries:
        try:
            backing = (_SYS_BLOCK / name / "loop" / "backing_file").read_text().rstrip("\n")
        except (FileNotFoundError, NotADirectoryError):
            continue  # not bound
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                continue  # being detached right now (by another process): not ours to find
            raise
        if backing.startswith(prefix):
            out[f"/dev/{name}"] = backing.removesuffix(" (deleted)")
    return out


def device_of(image: Path) -> str | None:
    """The loop device `image` is attached to, if any."""
    real = os.path.realpath(image)
    for dev, backing in backed_under(image.parent).items():
        if backing == real:
            return dev
    return None
