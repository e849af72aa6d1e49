"""Net-in: a host port forwarded to a container port reaches the container from 127.0.0.1 and
from another machine (a namespace made by the test, arriving at the host's address there);
ports come from the pool and go back to it; taken ports and bad ports are refused."""

from __future__ import annotations

import pytest

from tests.integration.conftest import PORT_POOL_SIZE, Server
from tests.integration.net.helpers import (
    connect,
    create,
    in_netns,
    init_pid,
    listening,
    peer_namespace,
)

pytestmark = pytest.mark.root


async def test_net_in_reaches_the_container_from_loopback_and_outside(server: Server) -> None:
    c = server.client
    info = await create(c, handle="web")
    start = server.config.port_pool_start
    r = await c.post("/containers/web/net/in", json={"container_port": 8080})
    assert r.status_code == 200, r.text
    hp = r.json()["host_port"]
    assert r.json() == {"host_port": hp, "container_port": 8080}
    assert start <= hp < start + PORT_POOL_SIZE
    r = await c.post("/containers/web/net/in", json={})
    second = r.json()
    assert second["host_port"] == second["container_port"] != hp

    mapped = (await c.get("/containers/web/info")).json()["mapped_ports"]
    assert mapped == [{"host_port": hp, "container_port": 8080}, second]

    with listening(in_netns(init_pid(info)), "0.0.0.0", 8080, arg="web"):
        # From a client on this host, through the loopback address.
        reply = connect([], "127.0.0.1", hp)
        assert reply.ok, reply
        assert reply.data.startswith("web "), reply
        # Loopback sources are masqueraded to the host side: the only way back to the host.
        assert reply.data == f"web {info['host_ip']}"
        # From another machine, arriving at the host's address on its link.
        with peer_namespace() as peer:
            reply = connect(peer.where, peer.host_ip, hp)
            assert reply.ok, reply
            assert reply.data == f"web {peer.ns_ip}"  # the client's own address
        # A port nobody mapped is not forwarded.
        assert not connect([], "127.0.0.1", second["host_port"] + 1, timeout=1).ok


async def test_taken_and_bad_ports(server: Server) -> None:
    c = server.client
    await create(c, handle="a")
    await create(c, handle="b")
    start = server.config.port_pool_start
    r = await c.post("/containers/a/net/in", json={"host_port": start + 50, "container_port": 80})
    assert r.status_code == 200, r.text
    for handle in ("a", "b"):
        r = await c.post(f"/containers/{handle}/net/in", json={"host_port": start + 50})
        assert r.status_code == 409, r.text
        assert r.json()["type"] == "AddressInUseError"
    for bad in ({"host_port": 70000}, {"container_port": -1}, {"host_port": "x"}):
        r = await c.post("/containers/a/net/in", json=bad)
        assert r.status_code == 400, (bad, r.text)
    r = await c.post("/containers/nope/net/in", json={})
    assert r.status_code == 404
    info = (await c.get("/containers/a/info")).json()
    assert info["mapped_ports"] == [{"host_port": start + 50, "container_port": 80}]


async def test_ports_return_to_the_pool_on_destroy(server: Server) -> None:
    c = server.client
    await create(c, handle="hog")
    taken = []
    for _ in range(PORT_POOL_SIZE):
        r = await c.post("/containers/hog/net/in", json={"container_port": 80})
        assert r.status_code == 200, r.text
        taken.append(r.json()["host_port"])
    assert len(set(taken)) == PORT_POOL_SIZE
    await create(c, handle="next")
    r = await c.post("/containers/next/net/in", json={})
    assert r.status_code == 503, r.text
    assert r.json()["type"] == "CapacityExhaustedError"
    assert (await c.delete("/containers/hog")).status_code == 200
    r = await c.post("/containers/next/net/in", json={})
    assert r.status_code == 200, r.text
    assert r.json()["host_port"] in taken
