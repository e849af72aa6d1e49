"""Docker through its Engine API on /var/run/docker.sock (the fair peer of our HTTP API; the
CLI adds 25-36 ms a call here): create + start, exec with the output read from the hijacked
stream, forced remove. `bench/install-engines.sh` installs it and imports the image."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import msgspec

from bench.engine import INIT_ARGV, INIT_PATH, Engine, Executed, Pids, Unavailable
from bench.http import Connection, HttpError, Pool
from bench.memory import cmdline, comm, pids_named

SOCKET = "/var/run/docker.sock"
IMAGE = "garden-bench/busybox:latest"
LABEL = "garden-bench"  # every container the benchmarks make carries it
_json = msgspec.json.Decoder(dict[str, object]).decode


class DockerEngine(Engine):
    name = "docker"

    def __init__(self, socket_path: str = SOCKET) -> None:
        super().__init__()
        self.address = f"unix:{socket_path}"
        self.socket_path = socket_path
        self.pool = Pool(self.address)
        self.prefix = ""
        self.info_address = self.address

    async def probe(self) -> None:
        if not Path(self.socket_path).exists():
            raise Unavailable(
                f"no Docker daemon ({self.socket_path} missing): run bench/install-engines.sh"
            )
        try:
            status, body = await self.pool.call("GET", "/version")
        except (OSError, HttpError) as exc:
            raise Unavailable(f"Docker daemon not answering on {self.socket_path}: {exc}") from exc
        version = _json(body)
        self.prefix = f"/v{version['ApiVersion']}"
        self.version = f"Docker {version.get('Version')} (Engine API {version['ApiVersion']})"
        status, _ = await self.pool.call("GET", f"{self.prefix}/images/{quote(IMAGE)}/json")
        if status != 200:
            raise Unavailable(f"image {IMAGE} missing: run bench/install-engines.sh")

    async def _call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        data = None if body is None else msgspec.json.encode(body)
        return await self.pool.call(method, self.prefix + path, data)

    async def create(self, *, network: bool) -> tuple[str, float]:
        spec = {
            "Image": IMAGE,
            "Cmd": INIT_ARGV,
            "Labels": {LABEL: "1"},
            "HostConfig": {
                "NetworkMode": "bridge" if network else "none",
                "Binds": [f"{INIT_PATH}:{INIT_ARGV[0]}:ro"],
            },
        }
        started = time.perf_counter()
        status, body = await self._call("POST", "/containers/create", spec)
        if status != 201:
            raise RuntimeError(f"docker create: {status} {body[:300]!r}")
        id = str(_json(body)["Id"])
        self.live.add(id)  # a failed start is removed by cleanup like any live container
        status, body = await self._call("POST", f"/containers/{id}/start")
        if status not in (204, 304):
            raise RuntimeError(f"docker start: {status} {body[:300]!r}")
        return id, time.perf_counter() - started

    async def destroy(self, id: str) -> float:
        started = time.perf_counter()
        status, body = await self._call("DELETE", f"/containers/{id}?force=true")
        if status not in (204, 404):
            raise RuntimeError(f"docker rm: {status} {body[:300]!r}")
        self.live.discard(id)
        return time.perf_counter() - started

    async def exec(self, id: str, argv: list[str]) -> Executed:
        started = time.perf_counter()
        status, body = await self._call(
            "POST",
            f"/containers/{id}/exec",
            {"Cmd": argv, "AttachStdout": True, "AttachStderr": True},
        )
        if status != 201:
            raise RuntimeError(f"docker exec: {status} {body[:300]!r}")
        exec_id = str(_json(body)["Id"])
        conn = await Connection.open(self.address)
        try:
            response = await conn.request(
                "POST",
                f"{self.prefix}/exec/{exec_id}/start",
                msgspec.json.encode({"Detach": False, "Tty": False}),
                headers={"Connection": "Upgrade", "Upgrade": "tcp"},
            )
            if response.status not in (101, 200):
                raise RuntimeError(f"docker exec start: {response.status}")
            total = await _count_stdout(response.raw())
        finally:
            await conn.aclose()
        status, body = await self._call("GET", f"/exec/{exec_id}/json")
        seconds = time.perf_counter() - started
        code = _json(body).get("ExitCode")
        return Executed(int(code) if isinstance(code, int) else -1, total, seconds)

    def info_target(self, id: str) -> str:
        return f"{self.prefix}/containers/{id}/json"

    async def pids(self, ids: list[str]) -> Pids:
        daemons = [p for p in pids_named("dockerd") + pids_named("containerd")
                   if comm(p) in ("dockerd", "containerd")]  # fmt: skip
        wanted = set(ids)
        monitors = []
        for pid in pids_named("containerd-shim"):
            args = cmdline(pid)
            if any(a in wanted for a in args):
                monitors.append(pid)
        inits = []
        for id in ids:
            status, body = await self._call("GET", f"/containers/{id}/json")
            if status == 200:
                state = _json(body).get("State")
                if isinstance(state, dict) and state.get("Pid"):
                    inits.append(int(state["Pid"]))
        return Pids(daemons=daemons, monitors=monitors, inits=inits)

    async def cleanup(self) -> None:
        """Destroy what is live, then every container any bench run left (by its label)."""
        await super().cleanup()
        filters = quote(msgspec.json.encode({"label": [LABEL]}).decode())
        status, body = await self._call("GET", f"/containers/json?all=1&filters={filters}")
        if status == 200:
            for container in msgspec.json.decode(body, type=list[dict[str, object]]):
                await self.destroy(str(container["Id"]))

    async def aclose(self) -> None:
        await self.pool.aclose()


async def _count_stdout(pieces: AsyncIterator[bytes]) -> int:
    """Bytes of stdout in Docker's multiplexed stream: frames of an 8-byte header (stream type,
    3 zero bytes, big-endian length) and the payload, counted without being kept."""
    total = remaining = stream = 0
    header = b""
    async for piece in pieces:
        pos, end = 0, len(piece)
        while pos < end:
            if remaining:
                take = min(remaining, end - pos)
                if stream == 1:
                    total += take
                remaining -= take
                pos += take
                continue
            taken = piece[pos : pos + 8 - len(header)]
            header += taken
            pos += len(taken)
            if len(header) == 8:
                stream, remaining, header = header[0], int.from_bytes(header[4:8], "big"), b""
    return total
