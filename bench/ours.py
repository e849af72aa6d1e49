"""garden-trio under test: `garden server` as a separate process with its own state dir (under
/var/tmp, which a container's mapped root can traverse), resource tag and port, driven through
its HTTP API; and the sweep that leaves nothing of it behind."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import trio
from pybase64 import b64decode

from bench.engine import Engine, Executed, Pids
from bench.http import Connection, HttpError, Pool
from bench.memory import cmdline, pids_in_cgroups, pids_named
from garden.client.streams import base64_output
from garden.config import ServerConfig

# A create body: the server gives every container an address from its pool (API.md: `network`
# absent -> a free /30); it has no way to ask for none.
CREATE_SPEC = b"{}"
NETWORK_SPEC = b"{}"

START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_pool() -> str:
    """A /20 (1024 containers) of its own for each bench server, inside 10.64.0.0/10: apart
    from the default pool (10.254.0.0/22) and from the tests' pools (10.128.0.0/9)."""
    return str(ipaddress.IPv4Network((0x0A400000 + secrets.randbelow(1 << 10) * 4096, 20)))


def garden_argv() -> list[str]:
    script = Path(sys.executable).parent / "garden"
    return [str(script)] if script.exists() else [sys.executable, "-m", "garden.cli"]


class GardenServer:
    """One `garden server` process; `start` returns the seconds from exec to /ping answering."""

    def __init__(self, work_dir: Path, tag: str, *, extra_args: tuple[str, ...] = ()) -> None:
        self.work_dir = work_dir
        self.tag = tag
        self.state_dir = work_dir / "state"
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self.log_path = work_dir / "server.log"
        self.network_pool = bench_pool()
        self.extra_args = extra_args
        self.process: trio.Process | None = None

    @property
    def config(self) -> ServerConfig:
        return ServerConfig(
            state_dir=str(self.state_dir), tag=self.tag, bind_port=self.port,
            network_pool=self.network_pool,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> float:
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        argv = [
            *garden_argv(), "server", "--state-dir", str(self.state_dir), "--tag", self.tag,
            "--bind-port", str(self.port), "--network-pool", self.network_pool, *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            started = time.perf_counter()
            self.process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        with trio.fail_after(START_TIMEOUT):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"garden server exited:\n{self.log_tail()}")
                if await self._ping():
                    return time.perf_counter() - started
                # Waiting for another process to bind its port: nothing to await but time.
                await trio.sleep(0.002)

    async def _ping(self) -> bool:
        try:
            conn = await Connection.open(self.address)
        except OSError:
            return False
        try:
            status, _ = await conn.call("GET", "/ping")
            return status == 200
        except (OSError, HttpError, trio.BrokenResourceError):
            return False
        finally:
            await conn.aclose()

    async def stop(self) -> None:
        """SIGTERM (containers keep running), SIGKILL if it does not end in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            await self.process.wait()
            return
        self.process.kill()
        await self.process.wait()

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    async def sweep(self) -> list[str]:
        """With the server stopped: release every kernel resource of its tag (as its start-up
        sweep would), its network (links, nftables table), its cgroup parent and its conmon
        socket dir."""
        from garden.linux.cgroups import detect
        from garden.main import build_kernel, socket_dir

        kernel = await build_kernel(self.config)
        swept = await kernel.sweep(set())
        try:
            from garden.main import build_networker  # type: ignore[attr-defined, unused-ignore]
        except ImportError:  # a server without networking
            pass
        else:
            await build_networker(self.config).remove_all()
        await detect().remove(self.config.cgroup_parent, timeout=10)
        shutil.rmtree(socket_dir(self.config), ignore_errors=True)
        return swept


class _Line(msgspec.Struct):
    process_id: str = ""
    source: str = ""
    data: str = ""
    exit_status: int | None = None


_decode_line = msgspec.json.Decoder(_Line).decode
_decode_dict = msgspec.json.Decoder(dict[str, object]).decode


class OursEngine(Engine):
    name = "garden"

    def __init__(self, server: GardenServer, version: str) -> None:
        super().__init__()
        self.server = server
        self.version = version
        self.pool = Pool(server.address)
        self.info_address = server.address
        self.has_network = False

    async def probe_network(self) -> bool:
        """True if the server gives containers an address (the networking branch is in)."""
        handle, _ = await self.create(network=True)
        try:
            status, body = await self.pool.call("GET", f"/containers/{handle}/info")
            info = _decode_dict(body) if status == 200 else {}
            self.has_network = bool(info.get("container_ip"))
        finally:
            await self.destroy(handle)
        return self.has_network

    def supports_network(self) -> bool:
        return self.has_network

    def supports_no_network(self) -> bool:
        return not self.has_network

    async def create(self, *, network: bool) -> tuple[str, float]:
        started = time.perf_counter()
        status, body = await self.pool.call("POST", "/containers", CREATE_SPEC)
        seconds = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"create: {status} {body[:300]!r}")
        handle = str(_decode_dict(body)["handle"])
        self.live.add(handle)
        return handle, seconds

    async def destroy(self, id: str) -> float:
        started = time.perf_counter()
        status, body = await self.pool.call("DELETE", f"/containers/{id}")
        seconds = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"destroy {id}: {status} {body[:300]!r}")
        self.live.discard(id)
        return seconds

    async def exec(self, id: str, argv: list[str]) -> Executed:
        body = msgspec.json.encode({"path": argv[0], "args": argv[1:]})
        started = time.perf_counter()
        conn = await self.pool.take()
        response = await conn.request("POST", f"/containers/{id}/processes?encoding=base64", body)
        if response.status != 200:
            raise RuntimeError(f"run {argv}: {response.status} {await response.read()!r}")
        total, status, seconds = 0, None, 0.0
        async for raw in response.lines():
            # what garden.client does: output lines decoded straight from the receive buffer
            if (out := base64_output(raw)) is not None:
                if out.source == "stdout":
                    total += len(out.data)
                continue
            line = _decode_line(raw)
            if line.exit_status is not None:
                # The clock stops at the exit status (the bar: "from request to exit_status"),
                # not at the end of the chunked body that follows it.
                seconds = time.perf_counter() - started
                status = line.exit_status
            elif line.source == "stdout":
                total += len(b64decode(line.data))
        await self.pool.release(conn)
        if status is None:
            raise RuntimeError(f"run {argv}: the stream ended without an exit status")
        return Executed(status, total, seconds)

    def info_target(self, id: str) -> str:
        return f"/containers/{id}/info"

    async def pids(self, ids: list[str]) -> Pids:
        from garden.linux.cgroups import detect

        inits: list[int] = []
        host = detect().host_path("pids", self.server.config.cgroup_parent)
        if host is not None and host.exists():
            inits = pids_in_cgroups(host)
        sockets = f"/run/garden-trio/{self.server.tag}"
        state = str(self.server.state_dir)
        monitors = [p for p in pids_named("conmon") if sockets in cmdline(p)]
        monitors += [p for p in pids_named("garden-monitor") if state in cmdline(p)]
        return Pids(daemons=[self.server.pid], monitors=monitors, inits=inits)

    async def cleanup(self) -> None:
        """Destroy whatever the server still lists (not only what we remember)."""
        try:
            status, body = await self.pool.call("GET", "/containers")
            if status == 200:
                self.live |= set(msgspec.json.decode(body, type=dict[str, list[str]])["handles"])
        except (OSError, HttpError):
            pass
        await super().cleanup()

    async def aclose(self) -> None:
        await self.pool.aclose()


def garden_version() -> str:
    from garden import __version__

    commit = ""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            check=False,
        )
        commit = out.stdout.decode().strip()
    except OSError:
        pass
    return f"garden-trio {__version__}" + (f" ({commit})" if commit else "")


def pid_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
