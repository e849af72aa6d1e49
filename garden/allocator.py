"""Which malloc `garden server` runs with: jemalloc when its library is installed (the process
re-executes itself once with it in `LD_PRELOAD`), glibc's otherwise or with `--malloc glibc`.

Why (docs/performance.md#memory-under-load-jemalloc): under `just load` glibc's heap spread
with the churn of ~1 MiB streaming buffers (RSS +1.4 MiB/min at 20 clients even with 2 arenas
and a trim every 30 s, `garden/malloc.py`); jemalloc's size classes and its decay of unused
dirty pages, run by a background thread, keep RSS to what is in use without trims.

The re-exec happens before anything heavy is imported (`garden/cli/__init__.py`), keeps the pid
(systemd's `Type=exec`, the tests' `server_process`, `just load` see one process), and is done
at most once (`_MARK`). The re-executed server puts `LD_PRELOAD` and `MALLOC_CONF` back as they
were, so the processes it starts (runtimes, monitors, nft, mkfs) do not inherit them. When the
library is missing or cannot be preloaded the server runs on glibc and says so in its log.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import MutableMapping, Sequence
from typing import Final, Literal

log = logging.getLogger("garden.allocator")

Malloc = Literal["jemalloc", "glibc"]
MALLOCS: Final = ("jemalloc", "glibc")
# Debian/Ubuntu's libjemalloc2 (multiarch dir), then other common places.
JEMALLOC_GLOBS: Final = (
    "/usr/lib/*-linux-gnu*/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
# background_thread: unused dirty pages are purged by jemalloc's own thread, also when the
# server is idle (without it only an allocation does); after 1 s unused (dirty_decay_ms, 10 s by
# default: ~20 MiB more at the peak of `just load`), in one arena (narenas, 8 per core by
# default, each holding dirty pages of its own: ~25 MiB more). Measured in
# docs/performance.md#memory-under-load-jemalloc.
JEMALLOC_CONF: Final = "background_thread:true,narenas:1,dirty_decay_ms:1000"
_MARK: Final = "GARDEN_MALLOC_REEXEC"  # set for the re-exec: what to put back, as JSON
_RESTORED: Final = ("LD_PRELOAD", "MALLOC_CONF")


def find_jemalloc(path: str = "") -> str | None:
    """`path` if given and a file, else the first jemalloc library found (None: none)."""
    if path:
        return path if os.path.isfile(path) else None
    import glob  # here: `active` is all that most importers use

    for pattern in JEMALLOC_GLOBS:
        for found in sorted(glob.glob(pattern)):
            if os.path.isfile(found):
                return found
    return None


def active() -> Malloc:
    """The allocator that `malloc` resolves to in this process."""
    return "jemalloc" if jemalloc_version() else "glibc"


def jemalloc_version() -> str:
    """jemalloc's `version` (empty when jemalloc is not this process's malloc)."""
    try:
        mallctl = ctypes.CDLL(None).mallctl  # jemalloc's, when it is loaded globally
    except (OSError, AttributeError):
        return ""
    value, size = ctypes.c_char_p(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_char_p))
    if mallctl(b"version", ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
        return ""
    return (value.value or b"").decode(errors="replace")


JEMALLOC_STATS: Final = ("allocated", "active", "resident", "mapped", "retained")


def jemalloc_stats() -> dict[str, int]:
    """jemalloc's totals in bytes (empty when it is not this process's malloc): `allocated` by
    the program, `active` in the pages that hold it, `resident` (all of jemalloc's pages in
    RAM, its metadata and unpurged dirty pages included), `mapped`, and `retained` (address
    space kept for reuse, not in RAM)."""
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except (OSError, AttributeError):
        return {}
    epoch = ctypes.c_uint64(1)
    size = ctypes.c_size_t(ctypes.sizeof(epoch))
    mallctl(b"epoch", ctypes.byref(epoch), ctypes.byref(size), ctypes.byref(epoch), size)
    out: dict[str, int] = {}
    for name in JEMALLOC_STATS:
        value, size = ctypes.c_size_t(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
        if mallctl(f"stats.{name}".encode(), ctypes.byref(value), ctypes.byref(size), None, 0):
            return {}  # built without statistics
        out[name] = value.value
    return out


def reexec_env(environ: dict[str, str], library: str) -> dict[str, str]:
    """The environment to exec the server again with `library` preloaded; it carries what
    `LD_PRELOAD` and `MALLOC_CONF` were so the new process can put them back."""
    import json

    env = dict(environ)
    env[_MARK] = json.dumps({k: environ.get(k) for k in _RESTORED})
    preload = environ.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)  # an operator's own MALLOC_CONF wins
    return env


def restore_env(environ: MutableMapping[str, str]) -> bool:
    """After the re-exec: `LD_PRELOAD` and `MALLOC_CONF` as they were before it (the library
    is loaded; children must not inherit it). False if this process is not a re-exec."""
    mark = environ.pop(_MARK, None)
    if mark is None:
        return False
    import json

    try:
        before = json.loads(mark)
    except ValueError:
        before = {}
    for key in _RESTORED:
        value = before.get(key) if isinstance(before, dict) else None
        if isinstance(value, str):
            environ[key] = value
        else:
            environ.pop(key, None)
    return True


def choose(malloc: Malloc, library_path: str = "") -> None:
    """Called first by `garden server`: with `malloc` jemalloc, not yet active and its library
    found, exec this same command again with it preloaded (does not return then). Otherwise
    returns, and the server runs with what it has; `report` logs which."""
    reexecuted = restore_env(os.environ)
    if malloc != "jemalloc" or reexecuted or active() == "jemalloc":
        return
    library = find_jemalloc(library_path)
    if library is None:
        return
    argv = list(getattr(sys, "orig_argv", ()) or [sys.executable, *sys.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(
            sys.executable, [sys.executable, *argv[1:]], reexec_env(dict(os.environ), library)
        )
    except OSError as exc:  # the server still works on glibc: `report` says so
        print(f"garden server: re-exec with {library} failed: {exc}", file=sys.stderr)


def choose_for_argv(argv: Sequence[str]) -> None:
    """`choose` by `garden server`'s own command line, read before argparse builds its parser
    (that and the imports behind it would be paid twice): `--malloc` and `--jemalloc-path`,
    the last of each winning as in argparse. Their values are checked by argparse afterwards."""
    malloc, path = "jemalloc", ""
    for i, word in enumerate(argv):
        flag, eq, value = word.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if flag == "--malloc":
            malloc = value
        elif flag == "--jemalloc-path":
            path = value
    if malloc in MALLOCS:
        choose(malloc, path)  # type: ignore[arg-type]  # checked just above


def report(malloc: Malloc, library_path: str = "") -> Malloc:
    """Log the allocator in use (a warning when jemalloc was asked for and is not); return it."""
    now = active()
    if now == "jemalloc":
        log.info(
            "allocator name=jemalloc version=%s conf=%s",
            jemalloc_version().split("-")[0],
            os.environ.get("MALLOC_CONF") or JEMALLOC_CONF,
        )
    elif malloc == "glibc":
        log.info("allocator name=glibc reason=--malloc-glibc")
    elif (library := find_jemalloc(library_path)) is None:
        log.warning(
            "allocator name=glibc reason=jemalloc-not-found looked=%s"
            " hint=install-libjemalloc2-or-pass---malloc-glibc",
            library_path or ",".join(JEMALLOC_GLOBS),
        )
    else:
        log.warning("allocator name=glibc reason=preload-failed library=%s", library)
    return now
