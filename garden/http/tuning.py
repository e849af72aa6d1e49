"""Process settings that let large request bodies stream at disk speed (measured for file
uploads, see docs/files.md), and hypercorn's connections closed when their client has:

- hypercorn reads a socket 64 KiB at a time, and each read becomes one ASGI message that costs
  ~100 us of Python; reading up to 1 MiB at a time cuts the interpreter time of an upload by
  about 3x. (It is a module constant of hypercorn's trio server; if a hypercorn release drops
  it, this logs a warning and changes nothing.)
- A connection closes when its client has, not when its keep-alive timer fires, and large body
  pieces go out without a copy into their HTTP chunk: `garden/http/connection.py`, installed
  here as hypercorn's per-connection server and its HTTP/1.1 protocol's body send.
- The allocator keeps ~1 MiB buffers for reuse instead of a fresh mmap each: jemalloc
  (`garden/allocator.py`, the default), or glibc's heap tuned by `garden/malloc.py` (which also
  bounds what the heap keeps, with fewer arenas and a periodic trim).
"""

from __future__ import annotations

import logging
from typing import Final

from garden.http.connection import GardenTCPServer
from garden.malloc import tune_malloc

log = logging.getLogger("garden.http")

SOCKET_READ: Final = 1 << 20


def tune_hypercorn() -> None:
    import h11
    from hypercorn.protocol import h11 as h11_protocol
    from hypercorn.trio import run, tcp_server

    from garden.http import connection

    if isinstance(getattr(tcp_server, "MAX_RECV", None), int):
        tcp_server.MAX_RECV = SOCKET_READ
    else:
        log.warning("tuning-skipped what=hypercorn.trio.tcp_server.MAX_RECV (not found)")
    overridden = ("_read_data", "_idle_timeout")
    if run.__dict__.get("TCPServer") in (tcp_server.TCPServer, GardenTCPServer) and all(
        callable(getattr(tcp_server.TCPServer, name, None)) for name in overridden
    ):
        # worker_serve looks the name up for each connection it accepts
        run.TCPServer = GardenTCPServer  # type: ignore[attr-defined]
    else:
        log.warning("tuning-skipped what=hypercorn.trio.run.TCPServer (not as expected)")
    protocol = h11_protocol.H11Protocol
    if protocol.__dict__.get("_send_h11_event") in (
        connection._send_h11_event_joined,
        connection.send_h11_event,
    ) and callable(getattr(h11.Connection, "send_with_data_passthrough", None)):
        protocol._send_h11_event = connection.send_h11_event  # type: ignore[method-assign]
    else:
        log.warning("tuning-skipped what=hypercorn H11Protocol._send_h11_event (not as expected)")


def tune_for_streaming() -> None:
    tune_hypercorn()
    tune_malloc()  # again: cheap, and the settings belong to streaming too
