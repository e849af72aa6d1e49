"""`garden run`, `garden attach` and `garden signal`: a process's output goes to this
terminal's stdout and stderr as it is produced, `-i` passes stdin, `-t` opens a terminal, and
the command exits with the process's exit status."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from garden.cli.base import EXIT_OK, UsageError, make_client, parse_pairs
from garden.cli.render import print_json, write

if TYPE_CHECKING:
    import threading

    from garden.client import Client, ProcessStream


def configure(name: str, p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Add the arguments of command `name` to its parser."""
    if name == "run":
        p.description = (
            "Run CMD in the container; its stdout and stderr go to this command's, and this "
            "command exits with its exit status. Write the command after `--`."
        )
        p.usage = "garden run [options] HANDLE -- CMD [ARG...]"
        p.set_defaults(func=run)
        p.add_argument("handle", metavar="HANDLE")
        p.add_argument("argv", nargs="*", metavar="CMD", help=argparse.SUPPRESS)
        p.add_argument("-i", "--interactive", action="store_true", help="pass stdin to the process")
        p.add_argument(
            "-t", "--tty", action="store_true", help="give the process a terminal (a WebSocket)"
        )
        p.add_argument(
            "-d", "--detach", action="store_true", help="print the process id and return at once"
        )
        p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("-w", "--dir", metavar="DIR", help="working directory (default: home)")
        p.add_argument(
            "-u",
            "--user",
            metavar="USER",
            help="name or uid:gid (default: root if privileged, else vcap)",
        )
        p.add_argument("--privileged", action="store_true")
        p.add_argument(
            "--rlimit",
            action="append",
            default=[],
            metavar="NAME=N",
            help="setrlimit without RLIMIT_, e.g. nofile=1024 (repeatable)",
        )
        p.add_argument("--id", dest="process_id", metavar="ID", help="default: the server's")
    elif name == "attach":
        p.description = (
            "Print what the process has written since it started, then follow it, and exit "
            "with its exit status."
        )
        p.set_defaults(func=attach)
        p.add_argument("handle", metavar="HANDLE")
        p.add_argument("process_id", metavar="PROCESS_ID")
        p.add_argument("-i", "--interactive", action="store_true", help="pass stdin to the process")
    elif name == "signal":
        p.set_defaults(func=signal)
        p.add_argument("handle", metavar="HANDLE")
        p.add_argument("process_id", metavar="PROCESS_ID")
        p.add_argument(
            "signal", nargs="?", default="TERM", metavar="SIGNAL", help="name or number (TERM)"
        )
    else:
        raise AssertionError(name)


def run(args: argparse.Namespace) -> int:
    from garden.api import ProcessSpec, TtySize

    if not args.argv:
        raise UsageError("no command: write it after `--`, e.g. garden run HANDLE -- echo hi")
    rlimits: dict[str, int] = {}
    for name, value in parse_pairs(args.rlimit, "--rlimit").items():
        try:
            rlimits[name] = int(value)
        except ValueError:
            raise UsageError(f"--rlimit {name}: {value!r} is not a whole number") from None
    for item in args.env:
        if "=" not in item or item.startswith("="):
            raise UsageError(f"--env: expected KEY=VALUE, got {item!r}")
    tty: bool | TtySize = False
    if args.tty:
        from garden.cli.terminal import terminal_size

        columns, rows = terminal_size()
        tty = TtySize(columns=columns, rows=rows)
    spec = ProcessSpec(
        path=args.argv[0],
        args=args.argv[1:],
        env=args.env,
        dir=args.dir,
        user=args.user,
        privileged=args.privileged,
        rlimits=rlimits,
        tty=tty,
        id=args.process_id,
        stdin=args.interactive or args.tty,
    )
    client = make_client(args)
    # base64 gives the exact bytes the process wrote; --json shows the stream as the API sends it.
    stream = client.run(args.handle, spec, base64=not args.json)
    if args.detach:
        stream.close()
        if args.json:
            from garden.api import ProcessPayload

            print_json(ProcessPayload(process_id=stream.process_id))
        else:
            print(stream.process_id)
        return EXIT_OK
    if args.tty:
        from garden.cli.terminal import run_session

        stream.close()
        with client.terminal(args.handle, stream.process_id) as term:
            return exit_code(run_session(term, interactive=args.interactive))
    if args.interactive:
        start_stdin_pump(client, args.handle, stream.process_id)
    return follow(stream, args.json)


def attach(args: argparse.Namespace) -> int:
    client = make_client(args)
    stream = client.attach(args.handle, args.process_id, base64=not args.json)
    if args.interactive:
        start_stdin_pump(client, args.handle, stream.process_id)
    return follow(stream, args.json)


def signal(args: argparse.Namespace) -> int:
    sig: str | int = int(args.signal) if args.signal.isdigit() else args.signal
    make_client(args).signal(args.handle, args.process_id, sig)
    if args.json:
        print_json({})
    return EXIT_OK


def follow(stream: ProcessStream, as_json: bool) -> int:
    """Copy the stream to stdout/stderr (or print its payloads); the process's exit status."""
    sys.stdout.flush()
    with stream:
        if as_json:
            from garden.api import ProcessPayload

            print_json(ProcessPayload(process_id=stream.process_id))
            for payload in stream:
                print_json(payload)
            status = stream.wait()
            print_json(ProcessPayload(process_id=stream.process_id, exit_status=status))
            return exit_code(status)
        for out in stream.outputs():
            write(out.data, 1 if out.source == "stdout" else 2)
        return exit_code(stream.wait())


def exit_code(status: int) -> int:
    """A process's exit status as this command's (0-255; anything else is 255)."""
    return status if 0 <= status <= 255 else 255


def _stdin_chunks() -> Iterator[bytes]:
    while data := os.read(0, 64 * 1024):
        yield data


def start_stdin_pump(client: Client, handle: str, process_id: str) -> threading.Thread:
    """Stream this command's stdin to the process in a thread (its own connection); the end
    of stdin closes the process's stdin. The thread dies with the command."""

    def pump() -> None:
        from garden.errors import GardenError

        try:
            with client.clone() as own:
                own.stdin(handle, process_id, _stdin_chunks())
        except GardenError as exc:
            print(f"garden: stdin: {exc.kind}: {exc.message}", file=sys.stderr)

    import threading

    thread = threading.Thread(target=pump, name="garden-stdin", daemon=True)
    thread.start()
    return thread
