"""Crashes in the middle of network work (GARDEN_CRASH_AT, garden/faults.py): after a restart
what was recorded is in force and works, what was not is gone from the kernel (links, the
nftables table, tc), its addresses and ports are free again, and nothing leaks."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import httpx
import pytest

from garden.linux.net import names
from tests.integration.conftest import ServerProcess, leftovers, nft_leftovers, our_links
from tests.integration.net.test_addresses import static_subnet

pytestmark = pytest.mark.root

TIMEOUT = httpx.Timeout(30)
LIMIT = {"rate": 1 << 20, "burst": 65536}


def shared_create(c: httpx.Client, subnet: str) -> None:
    c.post("/containers", json={"handle": "victim", "network": subnet})


def net_in(c: httpx.Client, subnet: str) -> None:
    assert c.post("/containers", json={"handle": "victim"}).status_code == 200
    c.post("/containers/victim/net/in", json={"host_port": 0, "container_port": 80})


def net_out(c: httpx.Client, subnet: str) -> None:
    assert c.post("/containers", json={"handle": "victim"}).status_code == 200
    c.post("/containers/victim/net/out", json={"network": "10.0.0.0/8"})


def limit(c: httpx.Client, subnet: str) -> None:
    assert c.post("/containers", json={"handle": "victim"}).status_code == 200
    c.put("/containers/victim/limits/bandwidth", json=LIMIT)


def destroy(c: httpx.Client, subnet: str) -> None:
    spec = {"handle": "victim", "network": subnet, "limits": {"bandwidth": LIMIT}}
    assert c.post("/containers", json=spec).status_code == 200
    assert c.post("/containers/victim/net/in", json={}).status_code == 200
    c.delete("/containers/victim")


# (crash point, operation, what is in force afterwards: "none" = no victim, or the recorded
# thing that must still be there)
CASES: list[tuple[str, Callable[[httpx.Client, str], None], str]] = [
    ("net:after-connect#2", shared_create, "none"),
    ("create:after-network#2", shared_create, "none"),
    ("net:after-map", net_in, "no-mapping"),
    ("record:NetInMapped", net_in, "mapping"),
    ("record:NetOutAllowed", net_out, "rule"),
    ("net:after-limit", limit, "no-limit"),
    ("record:BandwidthLimitSet", limit, "limit"),
    ("destroy:after-runtime", destroy, "none"),
]


def qdiscs(tag: str, ip: str) -> str:
    dev = names.link_name(tag, names.HOST_VETH, ip)
    return subprocess.run(
        ["tc", "qdisc", "show", "dev", dev], capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize(("point", "operation", "after"), CASES, ids=[c[0] for c in CASES])
def test_network_crash_at(
    server_process: ServerProcess,
    point: str,
    operation: Callable[[httpx.Client, str], None],
    after: str,
) -> None:
    sp = server_process
    subnet = str(static_subnet())
    sp.start(crash_at=point)
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        # A bystander on the same shared subnet, and the crash comes during the victim's turn.
        r = c.post("/containers", json={"handle": "bystander", "network": subnet})
        assert r.status_code == 200, r.text
        with pytest.raises(httpx.TransportError):
            operation(c, subnet)
    assert sp.wait_crashed() == -signal.SIGKILL
    sp.start()
    tag = sp.tag
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        handles = sorted(c.get("/containers").json()["handles"])
        assert handles == (["bystander"] if after == "none" else ["bystander", "victim"])
        by = c.get("/containers/bystander/info").json()
        expected = {names.link_name(tag, names.HOST_VETH, by["container_ip"])}
        expected.add(names.link_name(tag, names.BRIDGE, subnet.split("/")[0]))
        if after != "none":
            info = c.get("/containers/victim/info").json()
            ip = info["container_ip"]
            expected.add(names.link_name(tag, names.HOST_VETH, ip))
            if after == "mapping":
                assert [m["container_port"] for m in info["mapped_ports"]] == [80]
            if after == "no-mapping":
                assert info["mapped_ports"] == []
                # The port it took is free again: the pool hands it out anew.
                r = c.post("/containers/victim/net/in", json={})
                assert r.json()["host_port"] == sp.port_pool_start
            if after == "limit":
                expected.add(names.link_name(tag, names.IFB, ip))
                assert "tbf" in qdiscs(tag, ip)
            if after == "no-limit":
                assert "tbf" not in qdiscs(tag, ip)
                assert c.get("/containers/victim/limits/bandwidth").json()["rate"] == 0
        # The kernel holds exactly what the log says (our links; a bystander has no
        # nftables state but its subnet's).
        assert set(our_links(tag)) == expected
        if after in ("none", "no-limit"):
            assert [x for x in nft_leftovers(tag, sp.pool) if "subnet" not in x] == []
        for handle in handles:
            assert c.delete(f"/containers/{handle}").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []
