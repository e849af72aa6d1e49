"""Output: the API's JSON (`--json`) or text for people (aligned key/value rows, tables)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import msgspec

_encoder = msgspec.json.Encoder()


def write(data: bytes, fd: int = 1) -> None:
    """Write all of `data` to a file descriptor, unbuffered (output is shown as it comes)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def print_json(obj: object) -> None:
    """One line of compact JSON: the API's own answer."""
    sys.stdout.flush()
    write(_encoder.encode(obj) + b"\n")


def print_lines(lines: Sequence[str]) -> None:
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")


def kv_lines(rows: Sequence[tuple[str, str]]) -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{k:<{width}}  {v}".rstrip() for k, v in rows]


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    out = []
    for row in [headers, *rows]:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return out


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"


def pairs(mapping: Mapping[str, object], sep: str = "=") -> str:
    return ", ".join(f"{k}{sep}{v}" for k, v in sorted(mapping.items())) or "-"


def seconds(value: float) -> str:
    if value == 0:
        return "0 (never reaped)"
    return f"{value:g} s"
