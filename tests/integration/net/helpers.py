"""Helpers for the networking tests: host programs run inside a container's network namespace
(through nsenter, so no process API is needed and the container's rootfs does not matter), TCP
listeners and clients, and network namespaces the test makes itself, the only places besides
loopback and our own container subnets that test traffic may go."""

from __future__ import annotations

import ipaddress
import json
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PY = sys.executable

LISTENER = r"""
import socket, sys
ip, port, mode, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
s.listen(64)
print("ready", flush=True)
while True:
    c, addr = s.accept()
    try:
        if mode == "greet":  # say who we are and who called
            c.sendall(f"{arg} {addr[0]}".encode())
        elif mode == "sink":  # read everything, answer the count
            n = 0
            while b := c.recv(1 << 16):
                n += len(b)
            c.sendall(str(n).encode())
        elif mode == "source":  # send arg bytes
            c.sendall(b"x" * int(arg))
    except OSError:
        pass
    c.close()
"""

CLIENT = r"""
import socket, sys, time
ip, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n, timeout = int(sys.argv[4]), float(sys.argv[5])
t0 = time.perf_counter()
try:
    s = socket.create_connection((ip, port), timeout=timeout)
    got = 0
    if mode == "send":
        block = b"x" * (1 << 16)
        left = n
        while left > 0:
            s.sendall(block[: min(left, len(block))])
            left -= min(left, len(block))
        s.shutdown(socket.SHUT_WR)
        data = s.recv(100).decode()
    else:
        chunks = []
        while b := s.recv(1 << 16):
            got += len(b)
            if mode == "greet":
                chunks.append(b)
        data = b"".join(chunks).decode() if mode == "greet" else str(got)
    print(f"OK {time.perf_counter() - t0:.3f} {data}")
except OSError as e:
    print(f"ERROR {type(e).__name__} {e.errno}")
"""


def in_netns(pid: int | None = None, name: str | None = None) -> list[str]:
    """argv prefix that runs a host program in a container's (pid) or a named namespace."""
    if pid is not None:
        return ["nsenter", f"--net=/proc/{pid}/ns/net"]
    if name is not None:
        return ["nsenter", f"--net=/run/netns/{name}"]
    return []


def init_pid(info: dict[str, object]) -> int:
    started = json.loads(Path(str(info["container_path"]), "started.json").read_text())
    return int(started["pid"])


@contextmanager
def listening(
    where: list[str], ip: str, port: int, mode: str = "greet", arg: str = "hello"
) -> Iterator[None]:
    proc = subprocess.Popen(
        [*where, PY, "-c", LISTENER, ip, str(port), mode, arg],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            proc.kill()
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"listener on {ip}:{port} did not start: {line!r} {err}")
        yield
    finally:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Reply:
    ok: bool
    seconds: float
    data: str

    def __str__(self) -> str:
        return f"{'OK' if self.ok else 'ERROR'} {self.seconds:.3f} {self.data}"


def connect(
    where: list[str], ip: str, port: int, mode: str = "greet", n: int = 0, timeout: float = 3.0
) -> Reply:
    """Connect from `where` and, by `mode`: read the greeting, send `n` bytes, or read all."""
    proc = subprocess.run(
        [*where, PY, "-c", CLIENT, ip, str(port), mode, str(n), str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=False,
    )
    out = proc.stdout.strip()
    if out.startswith("OK "):
        _, seconds, *data = out.split(" ", 2)
        return Reply(True, float(seconds), data[0] if data else "")
    return Reply(False, 0.0, out + proc.stderr)


@dataclass(frozen=True)
class PeerNamespace:
    """A network namespace made by the test, joined to the host by a veth pair: the host side
    has `host_ip`, the namespace `ns_ip`, and the namespace routes everything to the host."""

    name: str
    host_link: str
    host_ip: str
    ns_ip: str
    subnet: str

    @property
    def where(self) -> list[str]:
        return in_netns(name=self.name)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def peer_namespace() -> Iterator[PeerNamespace]:
    # A random /30 of 198.18.0.0/15 (set aside for benchmarks), far from container pools.
    base = int(ipaddress.IPv4Address("198.18.0.0")) + secrets.randbelow(1 << 15) * 4
    subnet = ipaddress.IPv4Network((base, 30))
    host_ip, ns_ip = str(subnet.network_address + 1), str(subnet.network_address + 2)
    suffix = secrets.token_hex(3)
    name, host_link = f"gtest-{suffix}", f"tpeer{suffix}"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_link, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        Path(f"/proc/sys/net/ipv4/conf/{host_link}/forwarding").write_text("1")
        ns = ["-n", name]
        _ip(*ns, "addr", "add", f"{ns_ip}/30", "dev", "eth0")
        _ip(*ns, "link", "set", "eth0", "up")
        _ip(*ns, "link", "set", "lo", "up")
        _ip(*ns, "route", "add", "default", "via", host_ip)
        yield PeerNamespace(name, host_link, host_ip, ns_ip, str(subnet))
    finally:
        subprocess.run(["ip", "link", "del", host_link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


async def create(c: httpx.AsyncClient, **spec: object) -> dict[str, object]:
    """Create a container and return its info."""
    r = await c.post("/containers", json=spec)
    assert r.status_code == 200, r.text
    handle = r.json()["handle"]
    info = (await c.get(f"/containers/{handle}/info")).json()
    assert isinstance(info, dict)
    info["handle"] = handle
    return info


def wait_until(predicate: object, timeout: float = 5.0) -> bool:
    """Poll `predicate` (for kernel state that changes asynchronously, with nothing to await)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
