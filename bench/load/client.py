"""One load client: a loop of create → net-in → run with streamed output → files in and out →
attach → a bad request → destroy, checking every byte and exit status on the way.

A wrong answer to a good request (a 5xx, an unexpected 4xx, wrong bytes, a broken stream) is a
failure: something the client did not cause. Requests that are bad on purpose must get their
4xx; those are counted apart, as client-caused errors."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, NoReturn

import httpx
import msgspec
import pybase64
import trio

from bench.load.tally import LoadFailure, Tally

MIB = 1 << 20
REQUEST_TIMEOUT = 120.0


class _Line(msgspec.Struct):
    process_id: str = ""
    source: str = ""
    data: str = ""
    exit_status: int | None = None


_decode_line = msgspec.json.Decoder(_Line).decode


class Ran(msgspec.Struct, frozen=True, kw_only=True):
    process_id: str
    stdout: bytes
    stderr: bytes
    exit_status: int | None


def spec_for(handle: str, client: int, i: int) -> dict[str, Any]:
    """The create body of iteration `i`: plain, with properties and env, with cgroup limits,
    with a disk limit (its own loop image)."""
    kind = i % 4
    spec: dict[str, Any] = {"handle": handle}
    if kind == 1:
        spec["properties"] = {"load": "yes", "client": str(client)}
        spec["env"] = [f"LOAD_CLIENT={client}"]
    elif kind == 2:
        spec["limits"] = {
            "memory": {"limit_in_bytes": 128 * MIB},
            "cpu": {"limit_in_shares": 256},
            "pids": {"max": 100},
        }
    elif kind == 3:
        spec["limits"] = {"disk": {"byte_hard": 64 * MIB}}
        spec["properties"] = {"load": "disk"}
    return spec


class BadRequest(msgspec.Struct, frozen=True):
    name: str
    method: str
    path: str  # `{h}` stands for a live container's handle
    body: bytes
    status: int


BAD_REQUESTS = (
    BadRequest("unknown-handle", "GET", "/containers/no-such-container/info", b"", 404),
    BadRequest("bad-handle", "POST", "/containers", b'{"handle": "bad handle!"}', 400),
    BadRequest("bad-json", "POST", "/containers", b"{not json", 400),
    BadRequest(
        "missing-executable", "POST", "/containers/{h}/processes", b'{"path": "/nope"}', 404
    ),
    BadRequest(
        "wrong-type", "PUT", "/containers/{h}/limits/memory", b'{"limit_in_bytes": "lots"}', 400
    ),
    BadRequest("unknown-property", "GET", "/containers/{h}/properties/nope", b"", 404),
    BadRequest("missing-file", "GET", "/containers/{h}/files?source=/no/such/file", b"", 404),
)


class LoadClient:
    def __init__(self, number: int, http: httpx.AsyncClient, tally: Tally, seed: int) -> None:
        self.number = number
        self.http = http
        self.tally = tally
        self.rng = random.Random(seed * 1000 + number)
        self.live: set[str] = set()

    async def loop(self, until: Callable[[], bool]) -> None:
        """Iterations until `until()` says stop (checked between iterations)."""
        i = 0
        while not until():
            await self.iteration(i)
            self.tally.iterations += 1
            i += 1

    async def iteration(self, i: int) -> None:
        handle = f"load-{self.number}-{i}"
        try:
            await self.call("create", "POST", "/containers", json=spec_for(handle, self.number, i))
        except LoadFailure:
            return
        self.live.add(handle)
        try:
            await self.exercise(handle, i)
        except LoadFailure:
            pass  # counted; the container is destroyed all the same
        finally:
            with trio.CancelScope(shield=True):
                await self.destroy(handle)

    async def destroy(self, handle: str) -> None:
        try:
            await self.call("destroy", "DELETE", f"/containers/{handle}")
        except LoadFailure:
            return
        self.live.discard(handle)

    async def exercise(self, handle: str, i: int) -> None:
        base = f"/containers/{handle}"
        if i % 4 == 1:
            r = await self.call("property", "GET", f"{base}/properties/client")
            self.expect("property", r.json() == {"value": str(self.number)}, r.text)
        if i % 4 == 2:
            r = await self.call("net-in", "POST", f"{base}/net/in", json={"container_port": 8080})
            self.expect("net-in", r.json().get("container_port") == 8080, r.text)
        token = self.rng.randbytes(self.rng.randint(1, 64)).hex()
        ran = await self.run(
            "run-echo", handle, "sh", "-c", 'printf %s "$1"; printf %s "$2" >&2; exit 7',
            "sh", token, "err-" + token,
        )  # fmt: skip
        self.expect_ran("run-echo", ran, token.encode(), ("err-" + token).encode(), 7)
        count = self.rng.randint(1, 20_000)
        ran = await self.run("run-seq", handle, "seq", "1", str(count))
        expected = "".join(f"{k}\n" for k in range(1, count + 1)).encode()
        self.expect_ran("run-seq", ran, expected, b"", 0)
        await self.files(handle)
        await self.attach(handle)
        await self.bad_request(handle, i)

    async def files(self, handle: str) -> None:
        data = self.rng.randbytes(self.rng.randint(1, 512 * 1024))
        target = f"/containers/{handle}/files"
        await self.call(
            "file-upload", "PUT", f"{target}?destination=/tmp/load.bin", content=data,
            headers={"content-type": "application/octet-stream"},
        )  # fmt: skip
        r = await self.call("file-download", "GET", f"{target}?source=/tmp/load.bin")
        self.expect("file-download", r.content == data, f"{len(r.content)} bytes, not {len(data)}")

    async def attach(self, handle: str) -> None:
        """Start a process, drop the stream after its id, attach again: all of it, and 3."""
        body = {"path": "sh", "args": ["-c", "echo start; sleep 0.2; echo end; exit 3"]}
        url = f"/containers/{handle}/processes?encoding=base64"
        process_id = ""
        with self.tally.timed("attach-start"):
            try:
                async with self.http.stream("POST", url, json=body) as r:
                    if r.status_code != 200:
                        await r.aread()
                        self.fail("attach-start", f"{r.status_code} {r.text[:300]}")
                    async for raw in r.aiter_lines():
                        process_id = _decode_line(raw).process_id
                        break
            except httpx.HTTPError as exc:
                self.fail("attach-start", repr(exc))
        self.expect("attach-start", bool(process_id), "no process id")
        ran = await self.stream("attach", "GET", f"/containers/{handle}/processes/{process_id}")
        self.expect_ran("attach", ran, b"start\nend\n", b"", 3)

    async def bad_request(self, handle: str, i: int) -> None:
        bad = BAD_REQUESTS[(i + self.number) % len(BAD_REQUESTS)]
        path = bad.path.replace("{h}", handle)
        try:
            r = await self.http.request(
                bad.method, path, content=bad.body or None,
                headers={"content-type": "application/json"} if bad.body else None,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            self.fail(f"bad:{bad.name}", repr(exc))
        if r.status_code != bad.status:
            self.fail(f"bad:{bad.name}", f"{r.status_code} (not {bad.status}) {r.text[:300]}")
        try:
            kind = str(r.json()["type"])
        except (ValueError, KeyError, TypeError):
            self.fail(f"bad:{bad.name}", f"not an error body: {r.text[:300]}")
        self.tally.client_error(f"{bad.status} {kind}")

    # -- helpers ------------------------------------------------------------------------------

    async def call(self, op: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request that must answer 200, timed as `op`."""
        with self.tally.timed(op):
            try:
                r = await self.http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                self.fail(op, repr(exc))
            if r.status_code != 200:
                self.fail(op, f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r

    async def run(self, op: str, handle: str, path: str, *args: str) -> Ran:
        body = msgspec.json.encode({"path": path, "args": list(args)})
        url = f"/containers/{handle}/processes"
        return await self.stream(op, "POST", url, content=body)

    async def stream(self, op: str, method: str, url: str, **kwargs: Any) -> Ran:
        """A process stream (run or attach) read to its end, with base64 data."""
        out, err = bytearray(), bytearray()
        process_id, status = "", None
        with self.tally.timed(op):
            try:
                async with self.http.stream(
                    method, url, params={"encoding": "base64"}, **kwargs
                ) as r:
                    if r.status_code != 200:
                        await r.aread()
                        self.fail(op, f"{r.status_code} {r.text[:300]}")
                    async for raw in r.aiter_lines():
                        if not raw:
                            continue
                        line = _decode_line(raw)
                        process_id = process_id or line.process_id
                        if line.exit_status is not None:
                            status = line.exit_status
                        elif line.source == "stdout":
                            out += pybase64.b64decode(line.data)
                        elif line.source == "stderr":
                            err += pybase64.b64decode(line.data)
            except (httpx.HTTPError, msgspec.DecodeError) as exc:
                self.fail(op, repr(exc))
        return Ran(process_id=process_id, stdout=bytes(out), stderr=bytes(err), exit_status=status)

    def expect_ran(self, op: str, ran: Ran, stdout: bytes, stderr: bytes, status: int) -> None:
        self.expect(op, ran.exit_status == status, f"exit status {ran.exit_status}, not {status}")
        self.expect(op, ran.stdout == stdout, f"stdout {ran.stdout[:80]!r}... ({len(ran.stdout)})")
        self.expect(op, ran.stderr == stderr, f"stderr {ran.stderr[:80]!r}")

    def expect(self, op: str, ok: bool, why: str) -> None:
        if not ok:
            self.fail(op, why)

    def fail(self, op: str, why: str) -> NoReturn:
        """Count a failure and abandon this iteration's remaining steps."""
        self.tally.fail(op, why)
        raise LoadFailure(f"{op}: {why}")
