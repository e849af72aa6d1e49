"""FakeGarden: an in-memory ASGI app answering, as API.md says, the routes that other branches
are still building (files, limits, net in/out, bulk_info, metrics, stdin, `/metrics`). It keeps
every request it got (method, path, query, headers, body, and how many body chunks arrived),
so tests can check what the client put on the wire."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, final
from urllib.parse import parse_qsl, unquote

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

EMPTY_LIMITS: dict[str, dict[str, int | None]] = {
    "memory": {"limit_in_bytes": None},
    "cpu": {"limit_in_shares": None},
    "disk": {
        "block_soft": None,
        "block_hard": None,
        "inode_soft": None,
        "inode_hard": None,
        "byte_soft": None,
        "byte_hard": None,
    },
    "bandwidth": {"rate": None, "burst": None},
}


@final
class Seen:
    def __init__(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
        chunks: int,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.chunks = chunks


@final
class FakeContainer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.limits = {k: dict(v) for k, v in EMPTY_LIMITS.items()}
        self.ports: list[dict[str, int]] = []
        self.rules: list[dict[str, Any]] = []
        self.stdin: dict[str, bytes] = {}


def _error(status: int, kind: str, message: str, handle: str = "") -> tuple[int, str, bytes]:
    body = {"type": kind, "message": message, "handle": handle, "process_id": ""}
    return status, "application/json", json.dumps(body).encode()


def _json(obj: object) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(obj).encode()


@final
class FakeGarden:
    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {"c": FakeContainer()}
        self.seen: list[Seen] = []
        self.next_port = 61001

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": f"{kind}.complete"})
                if kind == "lifespan.shutdown":
                    return
        assert scope["type"] == "http"
        body = bytearray()
        chunks = 0
        while True:
            message = await receive()
            if message.get("body"):
                body += message["body"]
                chunks += 1
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = parse_qsl(scope["query_string"].decode(), keep_blank_values=True)
        seen = Seen(scope["method"], scope["path"], query, headers, bytes(body), chunks)
        self.seen.append(seen)
        status, content_type, out = self.answer(seen)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type.encode())],
            }
        )
        await send({"type": "http.response.body", "body": out})

    def answer(self, r: Seen) -> tuple[int, str, bytes]:
        if r.method == "GET" and r.path == "/metrics":
            return 200, "text/plain; version=0.0.4", b"garden_containers 1\n"
        if r.method == "GET" and r.path == "/containers/bulk_info":
            handles = dict(r.query).get("handles", "").split(",")
            out: dict[str, Any] = {}
            for h in handles:
                if h in self.containers:
                    out[h] = {"info": self._info(h)}
                else:
                    out[h] = {"error": json.loads(_error(404, *self._unknown(h))[2])}
            return _json(out)
        m = re.fullmatch(r"/containers/([^/]+)/(.+)", r.path)
        if not m:
            return _error(404, "RouteNotFoundError", f"no route for {r.path}")
        handle, rest = unquote(m.group(1)), m.group(2)
        c = self.containers.get(handle)
        if c is None:
            return _error(404, *self._unknown(handle))
        query = dict(r.query)
        if rest == "metrics" and r.method == "GET":
            return _json({"memory_stat": {"usage_in_bytes": 4096, "cache": 0, "rss": 4096}})
        if rest == "files" and r.method == "PUT":
            dest = query["destination"]
            if r.headers.get("content-type") == "application/x-tar":
                with tarfile.open(fileobj=io.BytesIO(r.body)) as tar:
                    for member in tar:
                        f = tar.extractfile(member)
                        if f is not None:
                            c.files[f"{dest.rstrip('/')}/{member.name}"] = f.read()
            else:
                c.files[dest] = r.body
            return _json({})
        if rest == "files" and r.method == "GET":
            # As the server (docs/files.md): `/srv/app` gives entries `app/...`, `/srv/app/`
            # gives `./...`.
            src = query["source"].rstrip("/")
            prefix = "." if query["source"].endswith("/") else src.rsplit("/", 1)[-1]
            if src in c.files:
                return 200, "application/octet-stream", c.files[src]
            inside = {k: v for k, v in c.files.items() if k.startswith(src + "/")}
            if not inside:
                return _error(404, "FileNotFoundError", f"no such file: {src}", handle)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for name, data in sorted(inside.items()):
                    info = tarfile.TarInfo(f"{prefix}/{name[len(src) + 1 :]}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            return 200, "application/x-tar", buf.getvalue()
        m = re.fullmatch(r"limits/(memory|cpu|disk|bandwidth)", rest)
        if m:
            kind = m.group(1)
            if r.method == "PUT":
                for k, v in json.loads(r.body or b"{}").items():
                    if k in c.limits[kind] and v is not None:
                        c.limits[kind][k] = v
            return _json(c.limits[kind])
        if rest == "net/in" and r.method == "POST":
            req = json.loads(r.body or b"{}")
            host = req.get("host_port") or self.next_port
            self.next_port += 1
            mapping = {"host_port": host, "container_port": req.get("container_port") or host}
            c.ports.append(mapping)
            return _json(mapping)
        if rest == "net/out" and r.method == "POST":
            c.rules.append(json.loads(r.body))
            return _json({})
        m = re.fullmatch(r"processes/([^/]+)/stdin", rest)
        if m and r.method == "PUT":
            c.stdin[m.group(1)] = r.body
            return _json({})
        return _error(404, "RouteNotFoundError", f"no route for {r.path}")

    def _unknown(self, handle: str) -> tuple[str, str, str]:
        return "ContainerNotFoundError", f"unknown handle: {handle}", handle

    def _info(self, handle: str) -> dict[str, Any]:
        return {
            "state": "active",
            "events": [],
            "host_ip": "10.254.0.2",
            "container_ip": "10.254.0.1",
            "container_path": f"/var/lib/garden/containers/{handle}",
            "process_ids": [],
            "properties": {},
            "mapped_ports": self.containers[handle].ports,
            "grace_time": 0,
        }
