"""A container's root filesystem: the (uid-shifted) read-only lower layer, the per-container
overlay (upper/, work/, rootfs/ under the container's directory) and removing it all again.

Unprivileged containers run in a user namespace, and runc neither chowns files nor makes
idmapped mounts, so their lower layer is a copy of the rootfs with every owner shifted by the
uid base: built once per (rootfs, uid base) into a cache, atomically.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

import trio

from garden.errors import MountError
from garden.linux.trash import Trash

_libc = ctypes.CDLL(None, use_errno=True)
_mount = _libc.mount
_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_mount.restype = ctypes.c_int
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int
_MNT_DETACH = 2
_MAX_OPTIONS = 4000  # mount(2) data is limited to one page

# Mount points the OCI spec needs in the container's "/" (runc cannot create them in a
# user namespace on a lower layer it does not own): name -> (is_dir, mode).
_MOUNTPOINTS = {
    ".catatonit": (False, 0o755),
    "proc": (True, 0o555),
    "sys": (True, 0o555),
    "dev": (True, 0o755),
    "tmp": (True, 0o1777),
}

_build_locks: dict[str, trio.Lock] = {}


def _cache_name(rootfs: Path, uid_base: int) -> str:
    real = os.path.realpath(rootfs)
    digest = hashlib.sha256(f"{real}\0{uid_base}".encode()).hexdigest()[:24]
    return f"{digest}-{uid_base}"


async def prepare_lower(rootfs: Path, uid_base: int | None, cache_dir: Path) -> Path:
    """The directory to use as overlay lower layer: `rootfs` itself when privileged, else a
    copy with all owners shifted by `uid_base` (cached; built in a temp dir, then renamed)."""
    if uid_base is None:
        return rootfs
    name = _cache_name(rootfs, uid_base)
    dest = cache_dir / name
    lock = _build_locks.setdefault(name, trio.Lock())
    async with lock:
        if dest.is_dir():
            return dest
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cache_dir / f".tmp-{name}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            result = await trio.run_process(
                ["cp", "-a", "--reflink=auto", f"{rootfs}/.", str(tmp)],
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            if result.returncode != 0:
                raise MountError(f"copy rootfs {rootfs}", result.stderr.decode(errors="replace"))
            await trio.to_thread.run_sync(shift_owners, tmp, uid_base)
            try:
                os.rename(tmp, dest)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise MountError(f"rename {tmp} to {dest}", e) from e
                # Another process won the race; its copy is as good as ours.
        finally:
            if tmp.exists():
                await trio.to_thread.run_sync(shutil.rmtree, tmp, True)
    return dest


def shift_owners(top: Path, base: int) -> None:
    """lchown every entry by +base; chown clears setuid/setgid, so restore the mode after.
    An inode with several hardlinks is shifted once."""
    seen: set[int] = set()

    def shift(p: str) -> None:
        st = os.lstat(p)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if st.st_ino in seen:
                return
            seen.add(st.st_ino)
        os.lchown(p, st.st_uid + base, st.st_gid + base)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(p, stat.S_IMODE(st.st_mode))

    shift(str(top))
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            shift(os.path.join(dirpath, n))


def _check_option_path(p: Path) -> str:
    s = str(p)
    if any(c in s for c in ",:\\\n"):
        raise MountError(f"overlay path {s!r}", "contains one of , : \\ or a newline")
    return s


def _mount_overlay_sync(
    lowers: Sequence[Path], container_path: Path, uid_base: int | None, layer: Path | None
) -> Path:
    owner = uid_base if uid_base is not None else 0
    layer = layer if layer is not None else container_path
    upper, work, merged = layer / "upper", layer / "work", container_path / "rootfs"
    for d in (upper, work, merged):
        d.mkdir(mode=0o755, exist_ok=True)
    os.chown(upper, owner, owner)
    os.chmod(upper, stat.S_IMODE(os.stat(lowers[0]).st_mode) or 0o755)
    for name, (is_dir, mode) in _MOUNTPOINTS.items():
        if os.path.lexists(upper / name) or any(os.path.lexists(lo / name) for lo in lowers):
            continue
        if is_dir:
            (upper / name).mkdir()
        else:
            (upper / name).touch()
        os.chmod(upper / name, mode)
        os.lchown(upper / name, owner, owner)
    lowerdir = ":".join(_check_option_path(lo) for lo in lowers)
    options = (
        f"lowerdir={lowerdir},upperdir={_check_option_path(upper)},"
        f"workdir={_check_option_path(work)},index=off"
    )
    if len(options) > _MAX_OPTIONS:
        raise MountError(
            f"mount overlay on {merged}",
            f"{len(lowers)} lower layers: their paths are too long for one page of mount options",
        )
    if _mount(b"overlay", str(merged).encode(), b"overlay", 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount overlay on {merged} ({options})", os.strerror(err))
    return merged


async def mount_overlay(
    lower: Path | Sequence[Path],
    container_path: Path,
    uid_base: int | None,
    layer: Path | None = None,
) -> Path:
    """Mount the container's overlay at `container_path/rootfs` and return that path. `lower`
    is one directory or several (an image's layers, top first). Its upper/ and work/ go in
    `layer` (a filesystem of the container's own when it has a disk limit), by default in
    `container_path`."""
    lowers = [lower] if isinstance(lower, Path) else list(lower)
    try:
        return await trio.to_thread.run_sync(
            _mount_overlay_sync, lowers, container_path, uid_base, layer
        )
    except OSError as e:
        raise MountError(f"prepare overlay in {container_path}", e) from e


def _unmount_sync(target: Path) -> None:
    for _ in range(8):  # more than one mount may be stacked on the target
        if _umount2(str(target).encode(), 0) == 0:
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
            return  # not (or no longer) a mount point
        if err == errno.EBUSY and _umount2(str(target).encode(), _MNT_DETACH) == 0:
            continue
        raise MountError(f"umount {target}", os.strerror(ctypes.get_errno() or err))
    raise MountError(f"umount {target}", "still mounted after 8 unmounts")


def mount_sync(source: str, target: Path, fstype: str, data: str = "") -> None:
    """mount(2) `source` of type `fstype` on `target` with the given options."""
    if _mount(source.encode(), str(target).encode(), fstype.encode(), 0, data.encode()) != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount {fstype} {source} on {target} ({data})", os.strerror(err))


async def unmount(target: Path) -> None:
    """Unmount `target`; not mounted counts as done (lazy detach when busy)."""
    await trio.to_thread.run_sync(_unmount_sync, target)


async def unmount_overlay(container_path: Path) -> None:
    """Unmount `container_path/rootfs`; not mounted counts as done (lazy detach when busy)."""
    await trio.to_thread.run_sync(_unmount_sync, container_path / "rootfs")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path` in our mount namespace (from /proc/self/mountinfo)."""
    prefix = os.path.realpath(path) if os.path.exists(path) else os.path.abspath(path)
    out: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = _unescape(line.split(" ", 5)[4])
            if mp == prefix or mp.startswith(prefix.rstrip("/") + "/"):
                out.append(Path(mp))
    return out


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in s:
        return s
    return s.encode().decode("unicode_escape").encode("latin-1").decode()


async def remove_tree(container_path: Path, trash: Trash | None = None) -> None:
    """Delete the container's directory (or move it to `trash`, which deletes it later);
    absent is done. Refuses while anything is mounted below it, so a missed unmount can never
    delete through a mount into other data."""
    left = await trio.to_thread.run_sync(mounts_under, container_path)
    if left:
        raise MountError(f"remove {container_path}", f"still mounted: {', '.join(map(str, left))}")
    if trash is not None:
        await trash.discard(container_path)
        return

    def rm() -> None:
        try:
            shutil.rmtree(container_path)
        except FileNotFoundError:
            pass

    try:
        await trio.to_thread.run_sync(rm)
    except OSError as e:
        raise MountError(f"remove {container_path}", e) from e
