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

# Every command: the module that configures and runs it, and its one-line help. Only the
# module of the command being run is imported and only its parser is filled in (argparse
# spends ~0.3 ms per argument): `garden run` must start fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "server": ("server", "run the Garden API server"),
    "ping": ("containers", "check that the server answers"),
    "capacity": ("containers", "memory, disk and how many more containers fit"),
    "list": ("containers", "list container handles, one a line"),
    "create": ("containers", "create a container and print its handle"),
    "info": ("containers", "a container's state, addresses, processes, properties, stats"),
    "metrics": ("containers", "a container's memory, cpu, disk and bandwidth statistics"),
    "destroy": ("containers", "destroy containers: kill every process, release everything"),
    "stop": ("containers", "stop every process of a container (the container stays)"),
    "grace-time": ("containers", "set how long an untouched container lives"),
    "property": ("containers", "get, set or remove container properties"),
    "events": ("containers", "the server's event log (an audit trail of every change)"),
    "run": ("processes", "run a process in a container and follow it"),
    "attach": ("processes", "follow a running (or finished) process"),
    "signal": ("processes", "send a signal to a process"),
    "stream-in": ("files", "copy a file or directory into a container"),
    "stream-out": ("files", "copy a file or directory out of a container"),
    "limit": ("limits", "show or change a container's limit"),
    "net-in": ("network", "forward a host port to a container port"),
    "net-out": ("network", "allow a container's traffic to a denied network"),
    "images": ("images", "list, import or prune the server's images (`images --help`)"),
}
# Options of the top-level parser that take a value (to find the command name in argv).
_VALUE_OPTIONS = {"--target", "--token", "--token-file", "--timeout"}


def command_name(argv: Sequence[str]) -> str | None:
    """The command named in `argv`, if any: the first word that is not an option."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUE_OPTIONS:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with `only` the parser of just that command (each
    parser argparse builds costs ~1 ms, most of it gettext looking up translations)."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="garden",
        formatter_class=base.Formatter,
        description="Garden container server and its client. `garden COMMAND --help` for more.",
        parents=[base.common_options(suppress=False)],
        epilog="Exit codes: 0 ok, 1 error from the server (or it cannot be reached), 2 bad "
        "usage; run and attach exit with the process's exit status.",
    )
    parser.add_argument("--version", action="version", version=f"garden-trio {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    common = base.common_options(suppress=True)
    for name, (module, help) in COMMANDS.items():
        if only is not None and name != only:
            continue
        parents = [] if name == "server" else [common]
        p = sub.add_parser(
            name,
            help=help,
            parents=parents,
            description=help[:1].upper() + help[1:] + ".",
            formatter_class=base.Formatter,
        )
        p.set_defaults(parser=p, subcommand=name)
        importlib.import_module(f"garden.cli.{module}").configure(name, p, common)
    return parser


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: what follows is a process's command line, taken verbatim
    (argparse before 3.12 also drops later `--`s, which `sh -c '...' -- x` needs)."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def import_msgspec_lean() -> None:
    """Import msgspec without typing_extensions. msgspec imports it, when it is installed, only
    to prefer its `get_type_hints` to `typing`'s, which on Python >= 3.11 handles the wire types
    as well; that is half of msgspec's import time (~15 ms of CPU), paid by every command.
    typing_extensions stays importable afterwards."""
    if "msgspec" in sys.modules or "typing_extensions" in sys.modules:
        return
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]
    try:
        import msgspec  # noqa: F401
    except ImportError:  # a msgspec that needs it after all: import it the usual way
        pass
    finally:
        del sys.modules["typing_extensions"]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    head, tail = split_command(args_list)
    name = command_name(head)
    if name == "server" and argv is None:
        from garden.allocator import choose_for_argv

        choose_for_argv(head)  # first: it may exec this same command again, with jemalloc
    if name != "server":
        import_msgspec_lean()
    from garden.errors import GardenError

    parser = build_parser(name if name in COMMANDS else None)
    args, extra = parser.parse_known_args(head)
    # argparse gives an optional positional its default as soon as an option follows the
    # positionals before it (`stream-in H --destination P FILE`): a command names such a
    # positional `late_positional`, and a single word left over fills it.
    late = getattr(args, "late_positional", None)
    if late and len(extra) == 1 and not extra[0].startswith("-") and not args.late_given:
        setattr(args, late, extra.pop())
    if extra:
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
    except OSError as exc:
        # A local file or terminal failed (the server's failures are GardenErrors).
        print(f"garden: {exc}", file=sys.stderr)
        return base.EXIT_ERROR
