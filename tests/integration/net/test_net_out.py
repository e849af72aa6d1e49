"""Net-out: traffic from containers to `--deny-network` ranges is refused, except through the
holes a container's rules open for it alone; replies to traffic coming in are never refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import Server
from tests.integration.net.helpers import (
    PeerNamespace,
    connect,
    create,
    in_netns,
    init_pid,
    listening,
    peer_namespace,
)
from tests.integration.net.test_addresses import static_subnet

pytestmark = pytest.mark.root


@pytest.fixture
def peer() -> Iterator[PeerNamespace]:
    with peer_namespace() as ns:
        yield ns


@pytest.fixture
def server_overrides(peer: PeerNamespace) -> dict[str, object]:
    return {"deny_networks": (peer.subnet, "172.16.0.0/12")}


def ping(pid: int, ip: str) -> bool:
    import subprocess

    from garden.config import DEFAULT_ROOTFS

    busybox = f"{DEFAULT_ROOTFS}/bin/busybox"
    proc = subprocess.run(
        [*in_netns(pid), busybox, "ping", "-c", "1", "-W", "1", ip],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


async def test_deny_network_and_holes(server: Server, peer: PeerNamespace) -> None:
    c = server.client
    a = await create(c, handle="a")
    b = await create(c, handle="b")
    pa, pb = in_netns(init_pid(a)), in_netns(init_pid(b))
    with (
        listening(peer.where, "0.0.0.0", 9001, arg="peer"),
        listening(peer.where, "0.0.0.0", 9002, arg="peer"),
    ):
        for where in (pa, pb):
            refused = connect(where, peer.ns_ip, 9001, timeout=2)
            assert not refused.ok, refused
        assert not ping(init_pid(a), peer.ns_ip)
        # The host side is not in the denied range: still reachable.
        with listening([], str(a["host_ip"]), 9003, arg="host"):
            assert connect(pa, str(a["host_ip"]), 9003).ok

        # A hole for one port, for `a` only.
        r = await c.post(
            "/containers/a/net/out",
            json={"network": peer.subnet, "port": 9001, "protocol": "tcp"},
        )
        assert r.status_code == 200, r.text
        reply = connect(pa, peer.ns_ip, 9001)
        assert reply.ok, reply
        assert reply.data == f"peer {peer.host_ip}"  # masqueraded to the host's address there
        assert not connect(pa, peer.ns_ip, 9002, timeout=2).ok  # another port
        assert not connect(pb, peer.ns_ip, 9001, timeout=2).ok  # another container

        # A range of addresses and ports, and icmp.
        r = await c.post(
            "/containers/b/net/out",
            json={
                "network": f"{peer.ns_ip}-{peer.ns_ip}",
                "port_range": "9000:9002",
                "protocol": "tcp",
                "log": True,
            },
        )
        assert r.status_code == 200, r.text
        assert connect(pb, peer.ns_ip, 9002).ok
        assert not ping(init_pid(b), peer.ns_ip)
        r = await c.post(
            "/containers/b/net/out", json={"protocol": "icmp", "icmp_type": 8, "icmp_code": 0}
        )
        assert r.status_code == 200, r.text
        assert ping(init_pid(b), peer.ns_ip)

        # All protocols to the whole range.
        r = await c.post("/containers/a/net/out", json={"network": peer.subnet})
        assert r.status_code == 200, r.text
        assert connect(pa, peer.ns_ip, 9002).ok
        assert ping(init_pid(a), peer.ns_ip)


async def test_a_shared_subnet_inside_a_denied_range(server: Server) -> None:
    """Containers of one subnet always reach each other (this machine runs br_netfilter, so
    traffic inside a bridge passes the forward hook); other containers are denied."""
    c = server.client
    subnet = str(static_subnet())  # inside 172.16.0.0/12, which is denied
    a = await create(c, handle="a", network=subnet)
    b = await create(c, handle="b", network=subnet)
    other = await create(c, handle="other")
    with listening(in_netns(init_pid(b)), "0.0.0.0", 9004, arg="b"):
        reply = connect(in_netns(init_pid(a)), str(b["container_ip"]), 9004)
        assert reply.ok and reply.data == f"b {a['container_ip']}", reply
        assert not connect(in_netns(init_pid(other)), str(b["container_ip"]), 9004, timeout=2).ok
        assert ping(init_pid(a), str(b["container_ip"]))


async def test_replies_to_inbound_traffic_pass(server: Server, peer: PeerNamespace) -> None:
    c = server.client
    info = await create(c, handle="served")
    hp = (await c.post("/containers/served/net/in", json={"container_port": 80})).json()
    with listening(in_netns(init_pid(info)), "0.0.0.0", 80, arg="served"):
        reply = connect(peer.where, peer.host_ip, hp["host_port"])
        assert reply.ok, reply


BAD_RULES = [
    {"port": 80},  # a port needs tcp or udp
    {"port": 80, "protocol": "icmp"},
    {"icmp_type": 8, "protocol": "tcp"},
    {"icmp_code": 0, "protocol": "icmp"},
    {"network": "10.0.0.0/33"},
    {"network": "10.0.0.9-10.0.0.1"},
    {"port_range": "90:80", "protocol": "tcp"},
    {"port_range": "80", "protocol": "tcp"},
    {"port": 0, "protocol": "udp"},
    {"protocol": "sctp"},
]


async def test_bad_rules_are_refused(server: Server) -> None:
    c = server.client
    await create(c, handle="x")
    for rule in BAD_RULES:
        r = await c.post("/containers/x/net/out", json=rule)
        assert r.status_code == 400, (rule, r.text)
    assert (await c.post("/containers/nope/net/out", json={})).status_code == 404
