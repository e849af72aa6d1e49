"""What every client command shares: the common options, making the client, parsing `k=v`,
sizes and durations, and the exit codes scripts rely on (docs/cli.md)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from garden.client import Client

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK = 0
EXIT_ERROR = 1  # the server answered with an error, or could not be reached
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # stdout closed early (`garden events --follow | head -1`)


class Formatter(argparse.HelpFormatter):
    """argparse's formatter, without its `import shutil` (4 ms: shutil imports bz2 and lzma)
    for the terminal width, which argparse does for every argument it adds."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def terminal_columns() -> int:
    import os

    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(2).columns
    except OSError:
        return 80


class UsageError(Exception):
    """A command line that parses but cannot work; exit code 2."""


def common_options(*, suppress: bool) -> argparse.ArgumentParser:
    """Options every client command takes, before or after the command name. The copy on
    each subcommand uses SUPPRESS so it does not override what was given before it."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    p = argparse.ArgumentParser(add_help=False, formatter_class=Formatter)
    g = p.add_argument_group("connection and output")
    g.add_argument(
        "--target",
        default=default(None),
        metavar="URL",
        help="server: http://HOST:PORT, https://..., unix:/PATH "
        "(default: $GARDEN_TARGET, else http://127.0.0.1:7777)",
    )
    g.add_argument("--token", default=default(None), help="bearer token (default: $GARDEN_TOKEN)")
    g.add_argument(
        "--token-file",
        default=default(None),
        metavar="PATH",
        help="read the bearer token from this file (default: $GARDEN_TOKEN_FILE)",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=default(60.0),
        metavar="SECONDS",
        help="for connecting and for each answer (streams wait as long as they need)",
    )
    g.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the API's JSON answer instead of text",
    )
    return p


def make_client(args: argparse.Namespace) -> Client:
    from garden.client import Client

    try:
        return Client(
            args.target, token=args.token, token_file=args.token_file, timeout=args.timeout
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """`["k=v", ...]` → a dict (later wins); an item without `=` is a usage error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


_SIZE = r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)"
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}


def parse_size(text: str) -> int:
    """`1024`, `64M`, `1.5GiB`, `512k`: bytes (suffixes are powers of 1024, as in Docker)."""
    import re

    m = re.fullmatch(_SIZE, text.strip(), re.IGNORECASE)
    if not m:
        raise UsageError(f"not a size: {text!r} (examples: 1048576, 512K, 64M, 1G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


_DURATION = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?"
_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_seconds(text: str) -> float:
    """`30`, `1.5`, `30s`, `5m`, `2h`: seconds."""
    import re

    m = re.fullmatch(_DURATION, text.strip())
    if not m:
        raise UsageError(f"not a duration: {text!r} (examples: 30, 30s, 5m, 2h)")
    return float(m.group(1)) * _SECONDS[m.group(2)]
