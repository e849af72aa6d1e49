"""`garden run -t`: this terminal connected to the process's terminal over its WebSocket.
Raw mode while it runs (restored on every way out), window size changes sent as resizes."""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import threading
from typing import TYPE_CHECKING

from garden.cli.render import write
from garden.errors import UnexpectedResponseError

if TYPE_CHECKING:
    from garden.client.terminal import Terminal


def terminal_size(fd: int = 1) -> tuple[int, int]:
    """(columns, rows) of the terminal on `fd`, else of $COLUMNS/$LINES, else 80x24."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        size = shutil.get_terminal_size((80, 24))
    return size.columns, size.lines


def run_session(term: Terminal, *, interactive: bool, in_fd: int = 0, out_fd: int = 1) -> int:
    """Pump `in_fd` (when interactive) to the terminal and its output to `out_fd` until the
    process exits; its exit status."""
    from garden.client.terminal import (
        TerminalClosed,
        TerminalExited,
        TerminalNotice,
        TerminalOutput,
    )

    raw = interactive and os.isatty(in_fd)
    saved = None
    if raw:
        import termios
        import tty

        saved = termios.tcgetattr(in_fd)
        tty.setraw(in_fd)
    winch_r, winch_w = os.pipe()
    os.set_blocking(winch_w, False)
    watch = os.isatty(out_fd) and threading.current_thread() is threading.main_thread()
    if watch:
        old_wakeup = signal.set_wakeup_fd(winch_w)
        old_handler = signal.signal(signal.SIGWINCH, lambda *_: None)
    try:
        reading = interactive
        while True:
            if term.pending:  # events that came with the handshake
                ready: list[int] = [term.fileno()]
            else:
                fds = [term.fileno(), winch_r] + ([in_fd] if reading else [])
                ready, _, _ = select.select(fds, [], [])
            if winch_r in ready:
                os.read(winch_r, 4096)
                term.resize(*terminal_size(out_fd))
            if in_fd in ready:
                data = os.read(in_fd, 64 * 1024)
                if data:
                    term.send(data)
                else:
                    reading = False
            if term.fileno() in ready:
                for event in term.receive():
                    if isinstance(event, TerminalOutput):
                        write(event.data, out_fd)
                    elif isinstance(event, TerminalExited):
                        return event.exit_status
                    elif isinstance(event, TerminalNotice):
                        error = event.error
                        print(f"garden: terminal: {error.kind}: {error.message}", file=sys.stderr)
                    elif isinstance(event, TerminalClosed):
                        if term.last_error is not None:
                            raise term.last_error
                        raise UnexpectedResponseError(
                            f"the terminal closed without an exit status ({event.code} "
                            f"{event.reason})".rstrip()
                        )
    finally:
        if watch:
            signal.set_wakeup_fd(old_wakeup)
            signal.signal(signal.SIGWINCH, old_handler)
        os.close(winch_r)
        os.close(winch_w)
        if saved is not None:
            import termios

            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
