"""The `garden` command: `garden server` runs the server; every other command is a client of
it (docs/cli.md). Exit codes: 0 ok, 1 an error from the server (or none reachable), 2 a bad
command line, and for `run`/`attach` the process's exit status.

Start-up time matters (`garden run H -- echo hi` is a whole process per call): modules are
imported only by the command that needs them, and the client path never imports trio, httpx,
quart, hypercorn or pyroute2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from garden import __version__
from garden.cli import base

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from garden.cli import containers, files, limits, network, processes, server

    parser = argparse.ArgumentParser(
        prog="garden",
        description="Garden container server and its client. `garden COMMAND --help` for more.",
        parents=[base.common_options(suppress=False)],
        epilog="Exit codes: 0 ok, 1 error from the server (or it cannot be reached), 2 bad "
        "usage; run and attach exit with the process's exit status.",
    )
    parser.add_argument("--version", action="version", version=f"garden-trio {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    common = base.common_options(suppress=True)
    server.add_parser(sub)
    containers.add_parsers(sub, common)
    processes.add_parsers(sub, common)
    files.add_parsers(sub, common)
    limits.add_parsers(sub, common)
    network.add_parsers(sub, common)
    for name, action in sub.choices.items():
        action.set_defaults(parser=action, subcommand=name)
    return parser


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: what follows is a process's command line, taken verbatim
    (argparse before 3.12 also drops later `--`s, which `sh -c '...' -- x` needs)."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    from garden.errors import GardenError

    args_list = list(sys.argv[1:] if argv is None else argv)
    head, tail = split_command(args_list)
    parser = build_parser()
    args = parser.parse_args(head)
    if tail:
        if isinstance(getattr(args, "argv", None), list):
            args.argv += tail  # garden run HANDLE -- CMD ARGS...
        else:
            args = parser.parse_args(args_list)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_usage(sys.stderr)
        return base.EXIT_USAGE
    try:
        return func(args)
    except base.UsageError as exc:
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {exc}", file=sys.stderr)
        return base.EXIT_USAGE
    except GardenError as exc:
        print(f"garden: {exc.kind}: {exc.message}", file=sys.stderr)
        return base.EXIT_ERROR
    except KeyboardInterrupt:
        return base.EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early: quiet, like a shell pipeline's SIGPIPE.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return base.EXIT_BROKEN_PIPE
