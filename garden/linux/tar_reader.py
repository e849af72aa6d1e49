"""Reading a tar stream in order, one member at a time, without tarfile's stream buffer (it
copies its whole read-ahead on every small read, and its data path copies each byte three
times).

Each 512-byte header is parsed by `tarfile.TarInfo.frombuf` (checksum, ustar prefix, base-256
numbers, V7 directories); pax extended and global headers and GNU long names/link names are
applied here, as tarfile applies them. Member data is handed out as views of the received
chunks. GNU sparse members are refused (tar -S archives; tarfile's own support for them needs
random access). The archive ends at a zero block or at the end of the stream on a header
boundary; what follows the end is not read.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from typing import IO, Final, Protocol, final

from garden.errors import InvalidRequestError

BLOCKSIZE: Final = tarfile.BLOCKSIZE
_MAX_EXTENDED: Final = 1 << 20  # a pax header or GNU long name larger than this is refused
_ZERO_BLOCK: Final = bytes(BLOCKSIZE)
_DATA_TYPES: Final = frozenset(tarfile.REGULAR_TYPES)
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")


class PieceSource(Protocol):
    """Bytes in order: `pieces(n)` yields exactly n bytes (EOFError if fewer are left)."""

    def pieces(self, size: int) -> Iterator[memoryview]: ...

    def at_end(self) -> bool: ...


@final
class FileSource:
    """A `PieceSource` over a binary file (tests, local archives)."""

    def __init__(self, f: IO[bytes], chunk: int = 1 << 20) -> None:
        self._f = f
        self._chunk = chunk
        self._peeked = b""

    def pieces(self, size: int) -> Iterator[memoryview]:
        while size > 0:
            data = self._peeked or self._f.read(min(size, self._chunk))
            self._peeked = b""
            if not data:
                raise EOFError(f"the archive ended {size} bytes early")
            if len(data) > size:
                data, self._peeked = data[:size], data[size:]
            size -= len(data)
            yield memoryview(data)

    def at_end(self) -> bool:
        if not self._peeked:
            self._peeked = self._f.read(self._chunk)
        return not self._peeked


def bad(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"bad tar: {message}")


@final
class TarReader:
    def __init__(self, source: PieceSource) -> None:
        self._source = source
        self._left = 0  # data (and padding) of the current member not yet read
        self._size = 0  # data of the current member for `data`
        self._global: dict[str, str] = {}

    def next(self) -> tarfile.TarInfo | None:
        """The next member's header (its data is skipped unless read first); None at the end."""
        self._skip(self._left)
        self._left = self._size = 0
        extended: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            if self._source.at_end():
                if extended or long_name is not None or long_link is not None:
                    raise bad("the archive ends after an extended header")
                return None
            header = self._read(BLOCKSIZE)
            if header == _ZERO_BLOCK:
                return None
            try:
                info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            except tarfile.HeaderError as e:
                raise bad(str(e) or type(e).__name__) from e
            if info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                extended.update(_pax_records(self._extended(info.size)))
            elif info.type == tarfile.XGLTYPE:
                self._global.update(_pax_records(self._extended(info.size)))
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = _gnu_long(self._extended(info.size))
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                long_link = _gnu_long(self._extended(info.size))
            else:
                break
        if info.type == tarfile.GNUTYPE_SPARSE or any(
            k.startswith("GNU.sparse.") for k in [*extended, *self._global]
        ):
            raise bad(f"member {info.name!r} is a GNU sparse file (not supported)")
        if long_name is not None:
            info.name = long_name.rstrip("/") if info.isdir() else long_name
        if long_link is not None:
            info.linkname = long_link
        _apply_pax(info, {**self._global, **extended})
        if info.type in _DATA_TYPES or info.type not in tarfile.SUPPORTED_TYPES:
            self._left = _padded(info.size)
            self._size = info.size
        return info

    def data(self) -> Iterator[memoryview]:
        """The current member's data, in pieces (call once, right after `next`)."""
        size, self._size = self._size, 0
        try:
            for piece in self._source.pieces(size):
                self._left -= len(piece)
                yield piece
        except EOFError as e:
            raise bad(str(e)) from e

    def _read(self, size: int) -> bytes:
        try:
            return b"".join(self._source.pieces(size))
        except EOFError as e:
            raise bad(str(e)) from e

    def _skip(self, size: int) -> None:
        try:
            for _ in self._source.pieces(size):
                pass
        except EOFError as e:
            raise bad(str(e)) from e

    def _extended(self, size: int) -> bytes:
        if not 0 <= size <= _MAX_EXTENDED:
            raise bad(f"an extended header of {size} bytes")
        data = self._read(_padded(size))
        return data[:size]


def _padded(size: int) -> int:
    return size + (-size % BLOCKSIZE)


def _gnu_long(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """ "%d %s=%s\\n" records (length counts the whole record); values UTF-8, or raw bytes
    (kept as surrogates) where they are not."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos : pos + 1] != b"\0":
        match = _PAX_RECORD.match(data, pos)
        if match is None:
            raise bad("a malformed pax record")
        length = int(match.group(1))
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise bad("a malformed pax record")
        key = match.group(2).decode("utf-8", "surrogateescape")
        out[key] = data[match.end() : end - 1].decode("utf-8", "surrogateescape")
        pos = end
    return out


def _apply_pax(info: tarfile.TarInfo, pax: dict[str, str]) -> None:
    for key, value in pax.items():
        try:
            if key == "path":
                info.name = value.rstrip("/") if info.isdir() else value
            elif key == "linkpath":
                info.linkname = value
            elif key == "size":
                info.size = int(value)
            elif key == "mtime":
                info.mtime = float(value)
            elif key in ("uid", "gid"):
                setattr(info, key, int(value))
        except ValueError as e:
            raise bad(f"pax {key}={value!r} is not a number") from e
    if info.size < 0:
        raise bad(f"member {info.name!r} has a negative size")
