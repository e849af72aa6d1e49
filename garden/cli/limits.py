"""`garden limit` and the `--limit` option of `garden create`: limits written as
`KIND=VALUE` (the kind's main field) or `KIND.FIELD=VALUE`, sizes with K/M/G suffixes."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING

from garden.cli.base import EXIT_OK, UsageError, make_client, parse_size
from garden.cli.render import kv_lines, print_json, print_lines

if TYPE_CHECKING:
    from garden.api import Limits

# The field that `KIND=VALUE` sets.
MAIN_FIELD = {
    "memory": "limit_in_bytes",
    "cpu": "limit_in_shares",
    "disk": "byte_hard",
    "bandwidth": "rate",
    "pids": "max",
}
# Fields given in bytes (take K/M/G suffixes); the others are plain counts.
SIZE_FIELDS = {"limit_in_bytes", "byte_soft", "byte_hard", "rate", "burst"}

LIMIT_HELP = (
    "KIND=VALUE or KIND.FIELD=VALUE (repeatable): memory=64M, cpu=512 (shares), pids=100, "
    "disk=1G (byte_hard), disk.inode_hard=10000, bandwidth.rate=1M, bandwidth.burst=64K"
)


def add_limit_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit", action="append", default=[], metavar="KIND[.FIELD]=VALUE", help=LIMIT_HELP
    )


def _value(field: str, text: str) -> int:
    if field in SIZE_FIELDS:
        return parse_size(text)
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{field}: expected a whole number, got {text!r}") from None


def _fields(kind_cls: type[object]) -> tuple[str, ...]:
    return tuple(getattr(kind_cls, "__struct_fields__", ()))


def limit_fields(kind: str, items: Iterable[str]) -> dict[str, int]:
    """`["64M"]` or `["limit_in_bytes=64M"]` for `kind` → `{"limit_in_bytes": 67108864}`."""
    from garden.api import LIMIT_KINDS

    cls = LIMIT_KINDS.get(kind)
    if cls is None:
        raise UsageError(f"unknown limit kind {kind!r}; known: {', '.join(MAIN_FIELD)}")
    out: dict[str, int] = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep:
            field, text = MAIN_FIELD[kind], item
        if field not in _fields(cls):
            raise UsageError(f"{kind} has no field {field!r}; fields: {', '.join(_fields(cls))}")
        out[field] = _value(field, text)
    return out


def parse_limits(items: Iterable[str]) -> Limits | None:
    """The `--limit` options of create as a `Limits`, None when there are none."""
    import msgspec

    from garden.api import Limits

    by_kind: dict[str, dict[str, int]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--limit: expected KIND=VALUE or KIND.FIELD=VALUE, got {item!r}")
        kind, dot, field = key.partition(".")
        spec = f"{field}={text}" if dot else text
        by_kind.setdefault(kind, {}).update(limit_fields(kind, [spec]))
    if not by_kind:
        return None
    return msgspec.convert(by_kind, Limits)


def configure(name: str, p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Add the arguments of `garden limit` to its parser."""
    assert name == "limit", name
    p.description = (
        "Show a limit (no values) or change it; a bare VALUE sets the main field (memory "
        "limit_in_bytes, cpu limit_in_shares, disk byte_hard, bandwidth rate, pids max). "
        "Prints the limit in force afterwards."
    )
    p.set_defaults(func=limit)
    p.add_argument("handle", metavar="HANDLE")
    p.add_argument("kind", choices=list(MAIN_FIELD))
    p.add_argument(
        "values", nargs="*", metavar="[FIELD=]VALUE", help="e.g. 64M, limit_in_bytes=64M"
    )


def limit(args: argparse.Namespace) -> int:
    import msgspec

    from garden.api import LIMIT_KINDS

    cls = LIMIT_KINDS[args.kind]
    client = make_client(args)
    if args.values:
        wanted = msgspec.convert(limit_fields(args.kind, args.values), cls)
        result = client.set_limit(args.handle, wanted)
    else:
        result = client.get_limit(args.handle, cls)
    if args.json:
        print_json(result)
    else:
        values = [(f, getattr(result, f)) for f in _fields(cls)]
        rows = [(f, f"{v} (no limit)" if v == 0 else str(v)) for f, v in values if v is not None]
        print_lines(kv_lines(rows) or ["(no limit)"])
    return EXIT_OK
