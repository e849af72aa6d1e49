"""The network as a process in an unprivileged container sees it, through the process API:
its address, route, names and nameservers; a server it runs reached through net-in from
127.0.0.1; the host side reached from inside."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.integration.conftest import Server
from tests.integration.net.helpers import connect, create, listening

pytestmark = pytest.mark.root

DNS = "192.0.2.53"


@pytest.fixture
def server_overrides() -> dict[str, object]:
    return {"dns_servers": (DNS,)}


async def run(server: Server, handle: str, *argv: str, user: str = "vcap") -> str:
    """Run `argv` in the container; its stdout (asserting exit status 0)."""
    spec: dict[str, Any] = {"path": argv[0], "args": list(argv[1:]), "user": user}
    async with server.client.stream("POST", f"/containers/{handle}/processes", json=spec) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        lines = [json.loads(line) async for line in r.aiter_lines() if line]
    assert lines[-1].get("exit_status") == 0, lines
    return "".join(p["data"] for p in lines if p.get("source") == "stdout")


async def test_what_the_container_sees(server: Server) -> None:
    c = server.client
    info = await create(c, handle="inside")
    ip, host = info["container_ip"], info["host_ip"]
    out = await run(server, "inside", "sh", "-c", "ip -4 addr show eth0; ip route")
    assert f"inet {ip}/30" in out
    assert f"default via {host} dev eth0" in out
    assert await run(server, "inside", "cat", "/etc/resolv.conf") == f"nameserver {DNS}\n"
    # Its own name resolves to its address (through /etc/hosts).
    out = await run(server, "inside", "ping", "-c", "1", "-W", "2", "inside", user="root")
    assert f"({ip})" in out.splitlines()[0]
    # The container reaches its host side.
    with listening([], str(host), 7006, arg="host"):
        out = await run(server, "inside", "nc", "-w", "2", str(host), "7006")
        assert out == f"host {ip}"


async def test_a_server_inside_reached_through_net_in(server: Server) -> None:
    c = server.client
    await create(c, handle="srv")
    hp = (await c.post("/containers/srv/net/in", json={"container_port": 8080})).json()
    spec = {"path": "nc", "args": ["-ll", "-p", "8080", "-e", "echo", "from-inside"]}
    async with c.stream("POST", "/containers/srv/processes", json=spec) as r:
        assert r.status_code == 200
        first = json.loads(await r.aiter_lines().__anext__())
    assert "process_id" in first  # the client went away; the server keeps running
    # The listener comes up inside on its own time: nothing to await but the port.
    with trio.fail_after(10):
        while not (reply := connect([], "127.0.0.1", hp["host_port"], timeout=1)).ok:
            await trio.sleep(0.05)
    assert reply.data == "from-inside"
