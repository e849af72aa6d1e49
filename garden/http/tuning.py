"""Process settings that let large request bodies stream at disk speed (measured for file
uploads, see docs/files.md):

- hypercorn reads a socket 64 KiB at a time, and each read becomes one ASGI message that costs
  ~100 us of Python; reading up to 1 MiB at a time cuts the interpreter time of an upload by
  about 3x. (It is a module constant of hypercorn's trio server; if a hypercorn release drops
  it, this logs a warning and changes nothing.)
- glibc serves allocations above 128 KiB (rising dynamically) with fresh mmaps, so every 1 MiB
  buffer is paid for in page faults and zeroing; a fixed threshold of 8 MiB and a trim
  threshold of 64 MiB keep such buffers in the heap for reuse. RSS stays flat: the heap keeps
  at most what was in use at once.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

log = logging.getLogger("garden.http")

SOCKET_READ: Final = 1 << 20
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 8 << 20
TRIM_THRESHOLD: Final = 64 << 20


def tune_hypercorn() -> None:
    from hypercorn.trio import tcp_server

    if not isinstance(getattr(tcp_server, "MAX_RECV", None), int):
        log.warning("tuning-skipped what=hypercorn.trio.tcp_server.MAX_RECV (not found)")
        return
    tcp_server.MAX_RECV = SOCKET_READ


def tune_malloc() -> None:
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc: nothing to tune
    if not (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    ):
        log.warning("tuning-skipped what=mallopt")


def tune_for_streaming() -> None:
    tune_hypercorn()
    tune_malloc()
