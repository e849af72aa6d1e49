"""Container addresses per the seed's rules: dynamic /30s from the pool, static subnets shared
by several containers, exact addresses, every error case; what the container sees inside
(address, route, /etc/hosts, /etc/resolv.conf); who reaches whom."""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from pathlib import Path

import pytest

from garden.linux.net import names
from garden.linux.net.netlink import route_mtu
from tests.integration.conftest import Server, our_links
from tests.integration.net.helpers import connect, create, in_netns, init_pid, listening

pytestmark = pytest.mark.root

DNS = ["192.0.2.53", "192.0.2.54"]


@pytest.fixture
def server_overrides() -> dict[str, object]:
    return {"dns_servers": tuple(DNS)}


def static_subnet() -> ipaddress.IPv4Network:
    """A random /24 in 172.16.0.0/12, outside every test server's pool."""
    return ipaddress.IPv4Network((0xAC100000 + secrets.randbelow(1 << 12) * 256, 24))


def inside(pid: int, *argv: str) -> str:
    return subprocess.run(
        [*in_netns(pid), *argv], capture_output=True, text=True, check=True
    ).stdout


async def test_dynamic_subnets_follow_the_seed(server: Server) -> None:
    c = server.client
    pool = ipaddress.IPv4Network(server.config.network_pool)
    first = await create(c, handle="first")
    second = await create(c, handle="second", privileged=True)
    assert first["container_ip"] == str(pool.network_address + 1)
    assert first["host_ip"] == str(pool.network_address + 2)
    assert second["container_ip"] == str(pool.network_address + 5)
    assert second["host_ip"] == str(pool.network_address + 6)

    pid = init_pid(first)
    addrs = inside(pid, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert f"inet {first['container_ip']}/30" in addrs
    assert f"default via {first['host_ip']} dev eth0" in inside(pid, "ip", "route")
    mtu = route_mtu()
    if mtu:  # the host's default route's, so nothing needs splitting on the way out
        assert f"mtu {mtu} " in inside(pid, "ip", "link", "show", "eth0")
    assert "state UP" in inside(pid, "ip", "link", "show", "lo") or "LOOPBACK,UP" in inside(
        pid, "ip", "link", "show", "lo"
    )

    rootfs = Path(str(first["container_path"]), "rootfs", "etc")
    hosts = (rootfs / "hosts").read_text()
    assert "127.0.0.1 localhost" in hosts
    assert f"{first['container_ip']} first" in hosts
    assert (
        (rootfs / "resolv.conf").read_text().startswith("".join(f"nameserver {d}\n" for d in DNS))
    )
    # Owned by the container's root, so that it may change them.
    assert (rootfs / "hosts").stat().st_uid == server.config.uid_base

    # A container reaches its host side, and the host reaches the container.
    with listening([], str(first["host_ip"]), 7001, arg="host"):
        reply = connect(in_netns(pid), str(first["host_ip"]), 7001)
        assert reply.ok, reply
        assert reply.data == f"host {first['container_ip']}"
    with listening(in_netns(pid), "0.0.0.0", 7002, arg="first"):
        reply = connect([], str(first["container_ip"]), 7002)
        assert reply.ok and reply.data.startswith("first "), reply
        # ... and another container (another subnet, no deny rules) reaches it through the host.
        reply = connect(in_netns(init_pid(second)), str(first["container_ip"]), 7002)
        assert reply.ok and reply.data == f"first {second['container_ip']}", reply


async def test_a_static_subnet_is_shared(server: Server) -> None:
    c = server.client
    subnet = static_subnet()
    base = subnet.network_address
    a = await create(c, handle="a", network=str(subnet))
    b = await create(c, handle="b", network=str(subnet))
    exact = await create(c, handle="exact", network=f"{base + 7}/24")
    assert (a["container_ip"], b["container_ip"]) == (str(base + 1), str(base + 2))
    assert exact["container_ip"] == str(base + 7)
    for info in (a, b, exact):
        assert info["host_ip"] == str(base + 254)
    after = await create(c, handle="after", network=str(subnet))
    assert after["container_ip"] == str(base + 3)

    # Containers on one subnet reach each other (through the subnet's bridge).
    with listening(in_netns(init_pid(b)), "0.0.0.0", 7003, arg="b"):
        reply = connect(in_netns(init_pid(a)), str(b["container_ip"]), 7003)
        assert reply.ok and reply.data == f"b {a['container_ip']}", reply
    bridge = names.link_name(server.config.tag, names.BRIDGE, str(base))
    assert bridge in our_links(server.config.tag)

    # The errors of the seed.
    r = await c.post("/containers", json={"handle": "taken", "network": f"{base + 7}/24"})
    assert r.status_code == 409, r.text
    assert r.json()["type"] == "AddressInUseError"
    r = await c.post("/containers", json={"handle": "overlap", "network": f"{base}/25"})
    assert r.status_code == 409, r.text
    assert r.json()["type"] == "SubnetOverlapError"
    pool = ipaddress.IPv4Network(server.config.network_pool)
    for bad in (f"{pool.network_address}/24", f"{base + 255}/24", f"{base + 254}/24", "nope"):
        r = await c.post("/containers", json={"handle": "bad", "network": bad})
        assert r.status_code == 400, (bad, r.text)
    assert sorted((await c.get("/containers")).json()["handles"]) == [
        "a",
        "after",
        "b",
        "exact",
    ]

    # The bridge goes with the last container of its subnet, not before.
    for handle in ("a", "b", "exact"):
        assert (await c.delete(f"/containers/{handle}")).status_code == 200
    assert bridge in our_links(server.config.tag)
    assert (await c.delete("/containers/after")).status_code == 200
    assert bridge not in our_links(server.config.tag)
    # The freed addresses are free again.
    again = await create(c, handle="again", network=f"{base + 7}/24")
    assert again["container_ip"] == str(base + 7)
