"""hypercorn's per-connection server (`hypercorn.trio.tcp_server.TCPServer`), closing a
connection as soon as its client has; installed by `garden.http.tuning.tune_hypercorn`.

hypercorn keeps a connection whose client closed it between two requests (its socket in
CLOSE_WAIT, or dead after a reset) until its keep-alive timer fires, 75 s by default
(`--keep-alive-timeout`): each connection a client closed held a descriptor that long (the
10-19 descriptors above the start an idle server still held after `just load`), and a client
that opens and closes connections quickly could run the server out of them. Once the read side
has ended, nothing can come any more: the idle timer ends at once and the connection closes as
soon as its request, if one is running, is answered.
"""

from __future__ import annotations

from hypercorn.trio.tcp_server import TCPServer


class GardenTCPServer(TCPServer):
    """hypercorn's connection, not outliving its peer's close by the keep-alive timeout."""

    _read_ended = False

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self._read_ended = True
            await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        if not self._read_ended:  # else let the connection close now
            await super()._idle_timeout()
