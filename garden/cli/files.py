"""`garden stream-in` and `garden stream-out`: files and directories into and out of a
container. A directory travels as a tar (`application/x-tar`), made or unpacked on the fly;
`-` is stdin or stdout."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, cast

from garden.cli.base import EXIT_OK, UsageError, make_client
from garden.cli.render import print_json, write

if TYPE_CHECKING:
    import tarfile
    from pathlib import Path


CHUNK = 1024 * 1024


def configure(name: str, p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Add the arguments of command `name` to its parser."""
    if name == "stream-in":
        p.description = (
            "Copy FILE (default: stdin) to the container path given by --destination. A "
            "directory's contents are sent as a tar and unpacked into the destination directory."
        )
        p.usage = "garden stream-in HANDLE --destination PATH [FILE|DIR|-]"
        p.set_defaults(func=stream_in)
        p.add_argument("handle", metavar="HANDLE")
        p.add_argument("source", nargs="?", metavar="FILE|DIR|-", action=_Given)
        p.set_defaults(late_positional="source", late_given=False)
        p.add_argument(
            "--destination", "-d", required=True, metavar="PATH", help="in the container"
        )
        p.add_argument(
            "--tar", action="store_true", help="the input is a tar archive: unpack it at PATH"
        )
    elif name == "stream-out":
        p.description = (
            "Copy the container path given by --source to DEST (default: stdout). A directory "
            "arrives as a tar: on stdout as is, into DEST unpacked."
        )
        p.usage = "garden stream-out HANDLE --source PATH [DEST|-]"
        p.set_defaults(func=stream_out)
        p.add_argument("handle", metavar="HANDLE")
        p.add_argument("dest", nargs="?", metavar="DEST|-", action=_Given)
        p.set_defaults(late_positional="dest", late_given=False)
        p.add_argument("--source", "-s", required=True, metavar="PATH", help="in the container")
    else:
        raise AssertionError(name)


class _Given(argparse.Action):
    """Stores an optional positional and notes that it was given (see `late_positional`)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if values is not None:
            setattr(namespace, self.dest, values)
            namespace.late_given = True


def _read_fd(fd: int) -> Iterator[bytes]:
    while data := os.read(fd, CHUNK):
        yield data


def _read_file(f: IO[bytes]) -> Iterator[bytes]:
    while data := f.read(CHUNK):
        yield data


def stream_in(args: argparse.Namespace) -> int:
    client = make_client(args)
    if args.source in (None, "-"):
        client.stream_in(args.handle, args.destination, _read_fd(0), tar=args.tar)
    elif os.path.isdir(args.source):
        from pathlib import Path

        client.stream_in(args.handle, args.destination, tar_directory(Path(args.source)), tar=True)
    else:
        try:
            f = open(args.source, "rb")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise UsageError(f"{args.source}: {exc.strerror}") from exc
        try:
            client.stream_in(args.handle, args.destination, _read_file(f), tar=args.tar)
        finally:
            f.close()
    if args.json:
        print_json({})
    return EXIT_OK


def tar_directory(root: Path) -> Iterator[bytes]:
    """The contents of `root` as a tar stream, made in a thread as it is read. Owners are
    reset to 0: host uids mean nothing in the container."""
    import tarfile
    import threading

    r, w = os.pipe()
    failure: list[BaseException] = []

    def reset_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def produce() -> None:
        try:
            with os.fdopen(w, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tar:
                for child in sorted(root.iterdir()):
                    tar.add(child, arcname=child.name, filter=reset_owner)
        except BrokenPipeError:
            pass  # the upload stopped (the server answered an error): the reader says why
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=produce, name="garden-tar", daemon=True)
    thread.start()
    try:
        yield from _read_fd(r)
    finally:
        os.close(r)
        thread.join()
    if failure:
        raise UsageError(f"{root}: {failure[0]}")


def stream_out(args: argparse.Namespace) -> int:
    from pathlib import Path

    client = make_client(args)
    with client.stream_out(args.handle, args.source) as download:
        if args.dest in (None, "-"):
            sys.stdout.flush()
            for chunk in download:
                write(chunk)
        elif download.is_tar:
            extract(download, Path(args.dest))
        else:
            dest = Path(args.dest)
            if dest.is_dir():
                dest = dest / Path(args.source).name
            with open(dest, "wb") as f:
                for chunk in download:
                    f.write(chunk)
    return EXIT_OK


class _ChunkReader:
    """A read-only file over an iterator of chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def extract(chunks: Iterable[bytes], dest: Path) -> None:
    """Unpack a tar stream into `dest` (created if missing). Names that would land outside
    `dest`, links out of it and device files are refused (tarfile's `data` filter)."""
    import tarfile

    from garden.errors import UnexpectedResponseError

    dest.mkdir(parents=True, exist_ok=True)
    reader = cast(IO[bytes], _ChunkReader(iter(chunks)))
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            try:
                tar.extract(member, dest, filter=_safe_filter)
            except tarfile.FilterError as exc:
                raise UnexpectedResponseError(
                    f"refusing {member.name!r} from the container: {exc}"
                ) from exc


def _safe_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    import tarfile

    return tarfile.data_filter(member, path)
