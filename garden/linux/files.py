"""`LinuxFiles`: files into and out of a container (the `ContainerFiles` port of
`garden/actors/ports.py`).

Where: the container's own view of its filesystem, `/proc/<init pid>/root` (its bind mounts
included) while the init runs (stop keeps it running), else the host mount of its rootfs
(`<container_path>/rootfs`). Every path is resolved inside that root by the kernel
(`garden.linux.inroot`), so nothing outside the container is ever read or written. Filesystems
holding kernel state (proc, sysfs, cgroup, ...) are refused both ways.

Who: the transfer's `user` (default root) is looked up in the container's /etc/passwd; a relative
path is relative to its home; everything written is owned by its uid/gid as the container sees
them (host id = uid base + id in an unprivileged container). Permissions are not checked as that
user: like `docker cp`, the server acts as the container's administrator.

How: the bytes move in a worker thread, 1 MiB at a time, through `garden.linux.threadio`, so
memory stays flat and a slow side slows the other. A file arrives whole or not at all
(`garden.linux.newfile`); a tar (`tar_in`) member by member. A directory leaves as a tar
(`tar_out`).

Errors: a missing source is `FileNotFoundInContainerError` (404); a bad path, bad tar or a
kernel-state filesystem `InvalidRequestError` (400); a directory where a file goes
`ConflictError` (409); ENOSPC/EDQUOT `DiskLimitExceededError` (507).
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import weakref
from collections.abc import AsyncIterable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Final, Literal, final

import trio

from garden import faults
from garden.errors import (
    ConflictError,
    DiskLimitExceededError,
    FileNotFoundInContainerError,
    GardenError,
    InvalidRequestError,
    KernelError,
)
from garden.linux import inroot, users
from garden.linux.newfile import NewFile
from garden.linux.plan import ContainerPlan, Started
from garden.linux.proc import is_same_process
from garden.linux.tar_in import TarExtractor
from garden.linux.tar_out import TarPacker
from garden.linux.threadio import (
    BLOCK,
    QUEUE,
    BlockWriter,
    BodyReader,
    feed,
    produced_blocks,
)

log = logging.getLogger("garden.linux.files")

_ID_RANGE: Final = 65536  # ids an unprivileged container maps
_MAX_SYMLINKS: Final = 40  # as the kernel's path walk
_RAW_MODE: Final = 0o644
# A transfer holds a worker thread from start to end. They come from a pool of their own, so
# that many long transfers never starve trio's default pool (the journal's writes, the kernel
# work of creates); transfers beyond it wait for a thread, their bodies unread.
TRANSFER_THREADS: Final = 64


@final
class Owner:
    """The transfer's user: ids inside the container, on the host, and its home."""

    __slots__ = ("gid", "home", "host_gid", "host_uid", "uid")

    def __init__(self, uid: int, gid: int, uid_base: int | None, home: str) -> None:
        self.uid, self.gid, self.home = uid, gid, home
        base = uid_base or 0
        self.host_uid, self.host_gid = uid + base, gid + base


@final
class LinuxFiles:
    def __init__(self, threads: int = TRANSFER_THREADS) -> None:
        self._threads = trio.CapacityLimiter(threads)

    async def stream_in(
        self,
        plan: ContainerPlan,
        started: Started | None,
        *,
        path: str,
        user: str,
        tar: bool,
        body: AsyncIterable[bytes],
        size: int | None = None,
    ) -> None:
        """Write `body` (of `size` bytes, when known) at `path`: a file, or with `tar` an
        archive unpacked into the directory `path`."""
        send, receive = trio.open_memory_channel[list[bytes]](QUEUE)
        reader = BodyReader(receive)

        def work() -> None:
            with _container_root(plan, started) as root_fd:
                owner = _owner(root_fd, user, plan)
                target = in_home(path, owner.home)
                with _mapped_errors(target, writing=True, handle=plan.handle):
                    if tar:
                        stats = TarExtractor(
                            root_fd, target, uid=owner.host_uid, gid=owner.host_gid
                        ).extract(reader)
                        log.info(
                            "files-in handle=%s dest=%s tar members=%d bytes=%d skipped=%d",
                            plan.handle,
                            target,
                            stats.members,
                            stats.bytes,
                            stats.skipped_devices + stats.skipped_other,
                        )
                    else:
                        write_file(root_fd, target, owner, reader, size)
                        log.info(
                            "files-in handle=%s dest=%s bytes=%d",
                            plan.handle,
                            target,
                            reader.bytes_read,
                        )

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed, body, send, reader)
                try:
                    await trio.to_thread.run_sync(work, limiter=self._threads)
                finally:
                    nursery.cancel_scope.cancel()  # an archive may end before the body does
        except BaseExceptionGroup as group:
            raise _single(group) from None

    async def open_source(
        self, plan: ContainerPlan, started: Started | None, *, path: str, user: str
    ) -> LinuxSource:
        """Open what `path` names (following symlinks inside the root): a regular file or a
        directory, ready to stream."""

        def work() -> LinuxSource:
            with _container_root(plan, started) as root_fd:
                owner = _owner(root_fd, user, plan)
                source = in_home(path, owner.home)
                with _mapped_errors(source, writing=False, handle=plan.handle):
                    return open_source(root_fd, source, plan.uid_base, self._threads)

        return await trio.to_thread.run_sync(work, limiter=self._threads)


@final
class LinuxSource:
    """An opened file or directory of a container; `stream()` reads it once (a directory as a
    tar) and closes it. `close()` is for a source that is never streamed."""

    def __init__(
        self,
        fd: int,
        kind: Literal["file", "dir"],
        size: int | None,
        prefix: str,
        uid_base: int | None,
        threads: trio.CapacityLimiter | None = None,
    ) -> None:
        self.kind: Literal["file", "dir"] = kind
        self.size = size
        self._fd = fd
        self._prefix = prefix
        self._uid_base = uid_base
        self._threads = threads
        self._close = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        self._close()

    def stream(self) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[bytes]]:
        return produced_blocks(self._produce, self._threads)

    def _produce(self, writer: BlockWriter) -> None:
        try:
            if self.kind == "dir":
                TarPacker(writer.write, uid_base=self._uid_base).pack(self._fd, self._prefix)
                return
            left = self.size or 0
            while left > 0:
                data = os.read(self._fd, min(BLOCK, left))
                if not data:
                    raise KernelError("read file", f"it shrank by {left} bytes while being read")
                writer.write(data)
                faults.reached("files:out-mid-stream")
                left -= len(data)
        finally:
            self.close()


# -- the pieces, synchronous (they run in worker threads) ---------------------------------------


@contextmanager
def _container_root(plan: ContainerPlan, started: Started | None) -> Iterator[int]:
    fd = open_container_root(plan, started)
    try:
        yield fd
    finally:
        os.close(fd)


def open_container_root(plan: ContainerPlan, started: Started | None) -> int:
    """An O_PATH fd of the container's root: its init's view when the init still runs (checked
    after opening, so a reused pid is never taken for it), else the host mount of its rootfs."""
    if started is not None:
        try:
            fd = os.open(f"/proc/{started.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            if is_same_process(started.pid, started.pid_start_time):
                return fd
            os.close(fd)
    rootfs = posixpath.join(plan.container_path, "rootfs")
    try:
        fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        mounted = os.fstat(fd).st_dev != os.stat(plan.container_path).st_dev
    except OSError as e:
        raise KernelError(f"open the root of container {plan.handle}", e, handle=plan.handle) from e
    if not mounted:  # an empty directory of the state dir, never a place to write
        os.close(fd)
        raise ConflictError(
            f"the filesystem of container {plan.handle} is not mounted", handle=plan.handle
        )
    return fd


def _owner(root_fd: int, user: str, plan: ContainerPlan) -> Owner:
    try:
        ids = users.lookup_user(root_fd, user or "root")
    except GardenError as e:
        e.handle = plan.handle
        raise
    if plan.uid_base is not None and not (0 <= ids.uid < _ID_RANGE and 0 <= ids.gid < _ID_RANGE):
        raise InvalidRequestError(
            f"user {user!r} ({ids.uid}:{ids.gid}) is outside the container's id map (0-65535)",
            handle=plan.handle,
        )
    return Owner(ids.uid, ids.gid, plan.uid_base, ids.home)


def in_home(path: str, home: str) -> str:
    """`path` as a path inside the container: a relative one is relative to `home`."""
    if not path:
        raise InvalidRequestError("missing path")
    if "\0" in path:
        raise InvalidRequestError("a path must not contain a NUL byte")
    return path if path.startswith("/") else posixpath.join(home or "/", path)


def split_file_path(path: str) -> tuple[str, str]:
    """(parent, name) of a path that names a file; ("", "") when it can only name a directory
    (it ends in "/", ".", ".." or is the root)."""
    if path.endswith("/"):
        return "", ""
    parent, name = posixpath.split(path)
    if name in ("", ".", ".."):
        return "", ""
    return parent or "/", name


def write_file(
    root_fd: int, path: str, owner: Owner, reader: BodyReader, size: int | None = None
) -> None:
    """Write the body as the file `path` (mode 0644, owned by `owner`): its parents are made;
    a symlink at its end is followed (inside the root) as open(2) would; it replaces what was
    there atomically; a directory there is a conflict. With the body's `size` known, the
    blocks are allocated first (a full disk fails before the body is read)."""
    parent_fd = -1
    try:
        for _ in range(_MAX_SYMLINKS):
            parent_path, name = split_file_path(path)
            if not name:
                _refuse_directory_path(root_fd, path)
            parent_fd = inroot.make_dirs(
                root_fd, parent_path, uid=owner.host_uid, gid=owner.host_gid
            )
            try:
                target = os.readlink(name, dir_fd=parent_fd)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
                break  # not a symlink: write here
            os.close(parent_fd)
            parent_fd = -1
            path = target if target.startswith("/") else posixpath.join(parent_path, target)
        else:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        refuse_pseudo_fs(parent_fd, parent_path)
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                raise ConflictError(f"{path} is a directory")
        except FileNotFoundError:
            pass
        with NewFile(parent_fd) as f:
            if size:
                f.reserve(size)
            while (block := reader.next_block()) is not None:
                f.writev(block)
                faults.reached("files:in-mid-stream")
            f.finish(uid=owner.host_uid, gid=owner.host_gid, mode=_RAW_MODE)
            faults.reached("files:before-publish")
            f.publish(name)
    finally:
        if parent_fd >= 0:
            os.close(parent_fd)


def _refuse_directory_path(root_fd: int, path: str) -> None:
    try:
        os.close(inroot.open_in_root(root_fd, path, os.O_PATH | os.O_DIRECTORY))
    except OSError:
        raise InvalidRequestError(f"{path} does not name a file") from None
    raise ConflictError(f"{path} is a directory")


def open_source(
    root_fd: int, path: str, uid_base: int | None, threads: trio.CapacityLimiter | None = None
) -> LinuxSource:
    """Open `path` inside the root for reading: a regular file or a directory."""
    fd = inroot.open_in_root(root_fd, path, os.O_PATH)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            kind: Literal["file", "dir"] = "dir"
            flags = os.O_RDONLY | os.O_DIRECTORY
        elif stat.S_ISREG(st.st_mode):
            kind = "file"
            flags = os.O_RDONLY | os.O_NOCTTY
        else:
            raise InvalidRequestError(f"{path} is neither a regular file nor a directory")
        # Reopen the very inode found (no second lookup): the magic link of our own fd.
        opened = os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)
    finally:
        os.close(fd)
    try:
        refuse_pseudo_fs(opened, path)
    except BaseException:
        os.close(opened)
        raise
    size = os.fstat(opened).st_size if kind == "file" else None
    return LinuxSource(opened, kind, size, tar_prefix(path), uid_base, threads)


def tar_prefix(path: str) -> str:
    """The name a directory's entries are under in its tar: its own name, or "" (entries as
    "./...") when the path ends in "/" or "." or is the root."""
    if path.endswith("/"):
        return ""
    name = posixpath.basename(path)
    return "" if name in ("", ".", "..") else name


def refuse_pseudo_fs(fd: int, path: str) -> None:
    name = inroot.pseudo_fs_name(fd)
    if name is not None:
        raise InvalidRequestError(f"{path} is on a {name} filesystem: not a place for files")


@contextmanager
def _mapped_errors(path: str, *, writing: bool, handle: str) -> Iterator[None]:
    """OSErrors as the client's errors (API.md's table), naming the path."""
    try:
        yield
    except OSError as e:
        raise file_error(e, path, writing=writing, handle=handle) from e
    except GardenError as e:
        e.handle = e.handle or handle
        raise


def file_error(e: OSError, path: str, *, writing: bool, handle: str = "") -> GardenError:
    code, reason = e.errno, e.strerror or str(e)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return DiskLimitExceededError(
            f"the container's disk is full (its disk limit is reached) while writing {path}: "
            f"{reason}",
            handle=handle,
        )
    if code in (errno.ENOENT, errno.ENOTDIR) and not writing:
        return FileNotFoundInContainerError(f"{path}: no such file or directory", handle=handle)
    if code in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
        return ConflictError(f"{path}: {reason}", handle=handle)
    if code == errno.ELOOP:
        return InvalidRequestError(
            f"{path}: too many levels of symbolic links, or a link through /proc", handle=handle
        )
    if code == errno.EXDEV:
        return InvalidRequestError(f"{path}: crosses out of the container", handle=handle)
    if code in (
        errno.ENOENT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.EMLINK,
        errno.ENXIO,
        errno.ETXTBSY,
        errno.EFBIG,
    ):
        return InvalidRequestError(f"{path}: {reason}", handle=handle)
    verb = "write" if writing else "read"
    return KernelError(f"{verb} {path} in the container", e, handle=handle)


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error a transfer failed with (its feeder never raises), else the group."""
    leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
    if len(leaves) == 1:
        return leaves[0]
    return group


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
