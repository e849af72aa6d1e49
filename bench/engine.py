"""What every engine under test offers the benchmarks: create and destroy a container (with or
without networking), run a command in one to its exit status while reading its stdout, and
name the host processes it spends per container, so that memory can be measured. Each call
returns the seconds it took, measured as close to the engine as its driver can."""

from __future__ import annotations

import abc

import msgspec
import trio

# The command every engine's containers run as PID 1 (bind-mounted from the host), so that
# their containers are alike: garden-trio's init, a pause process.
INIT_PATH = "/usr/bin/catatonit"
INIT_ARGV = ["/.catatonit", "-P"]


class Unavailable(Exception):
    """The engine cannot be measured on this machine; the message says why."""


class Executed(msgspec.Struct, frozen=True):
    status: int
    stdout_bytes: int
    seconds: float


class Pids(msgspec.Struct, frozen=True, kw_only=True):
    """Host processes an engine spends: its daemons (shared by every container), one monitor
    or shim per container (conmon, containerd-shim) and each container's init."""

    daemons: list[int] = []
    monitors: list[int] = []
    inits: list[int] = []


class Engine(abc.ABC):
    name: str = "?"
    version: str = ""
    # How the engine's own API is reached, for the requests/s benchmark (None: not measured).
    info_address: str | None = None

    def __init__(self) -> None:
        self.live: set[str] = set()  # containers made and not yet destroyed

    @abc.abstractmethod
    async def create(self, *, network: bool) -> tuple[str, float]:
        """Create and start a container running the init; (its id, seconds until running)."""

    @abc.abstractmethod
    async def destroy(self, id: str) -> float:
        """Remove the container and everything of it; seconds."""

    @abc.abstractmethod
    async def exec(self, id: str, argv: list[str]) -> Executed:
        """Run `argv` in the container, reading its stdout, until its exit status is known."""

    @abc.abstractmethod
    async def pids(self, ids: list[str]) -> Pids:
        """The host processes spent on the containers `ids`."""

    def info_target(self, id: str) -> str:
        """The request path of the container's info (GET) on `info_address`."""
        raise NotImplementedError

    def supports_network(self) -> bool:
        return True

    def supports_no_network(self) -> bool:
        return True

    async def cleanup(self) -> None:
        """Destroy every container still live, then release whatever is left."""
        for id in sorted(self.live):
            try:
                await self.destroy(id)
            except Exception as exc:
                print(f"bench: {self.name}: destroy {id} failed: {exc}")
        self.live.clear()

    async def aclose(self) -> None:
        """Stop whatever the driver itself started (connections, servers, workers)."""
        await trio.lowlevel.checkpoint()
