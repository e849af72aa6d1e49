"""Bandwidth limits shape both directions: 4 MiB at 1 MiB/s takes about 4 s each way, while
the same transfer unlimited is fast; PUT and GET answer the limit in force; a limit given at
create works the same; removing it removes the shaping."""

from __future__ import annotations

import subprocess

import pytest

from garden.linux.net import names
from tests.integration.conftest import Server, our_links
from tests.integration.net.helpers import connect, create, in_netns, init_pid, listening

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20
RATE = MiB
BURST = 64 * 1024
SIZE = 4 * MiB


def both_ways(info: dict[str, object]) -> tuple[float, float]:
    """Seconds to send SIZE bytes host -> container, and container -> host."""
    where, ip = in_netns(init_pid(info)), str(info["container_ip"])
    with listening(where, "0.0.0.0", 5001, mode="sink"):
        into = connect([], ip, 5001, mode="send", n=SIZE, timeout=30)
    assert into.ok and into.data == str(SIZE), into
    with listening([], str(info["host_ip"]), 5002, mode="sink"):
        out = connect(where, str(info["host_ip"]), 5002, mode="send", n=SIZE, timeout=30)
    assert out.ok and out.data == str(SIZE), out
    return into.seconds, out.seconds


def qdiscs(dev: str) -> str:
    return subprocess.run(
        ["tc", "qdisc", "show", "dev", dev], capture_output=True, text=True, check=False
    ).stdout


async def test_limit_shapes_both_directions(server: Server) -> None:
    c = server.client
    info = await create(c, handle="slow")
    fast_in, fast_out = both_ways(info)
    assert fast_in < 1.0 and fast_out < 1.0, (fast_in, fast_out)

    r = await c.get("/containers/slow/limits/bandwidth")
    assert r.json() == {"rate": 0, "burst": 0}
    r = await c.put("/containers/slow/limits/bandwidth", json={"rate": RATE, "burst": BURST})
    assert r.status_code == 200, r.text
    assert r.json() == {"rate": RATE, "burst": BURST}
    assert (await c.put("/containers/slow/limits/bandwidth", json={})).json() == r.json()
    assert (await c.get("/containers/slow/limits/bandwidth")).json() == r.json()

    stat = (await c.get("/containers/slow/info")).json()["bandwidth_stat"]
    assert stat["in_rate"] == stat["out_rate"] == RATE
    assert stat["rx_bytes"] >= SIZE and stat["tx_bytes"] >= SIZE  # the unlimited round

    slow_in, slow_out = both_ways(info)
    print(
        f"\n4 MiB unlimited: in {fast_in:.2f} s, out {fast_out:.2f} s; at 1 MiB/s: "
        f"in {slow_in:.2f} s, out {slow_out:.2f} s"
    )
    for took in (slow_in, slow_out):
        assert 3.3 < took < 6.0, (slow_in, slow_out)

    # Only the rate changes: the burst stays.
    r = await c.put("/containers/slow/limits/bandwidth", json={"rate": 4 * RATE})
    assert r.json() == {"rate": 4 * RATE, "burst": BURST}
    r = await c.put("/containers/slow/limits/bandwidth", json={"rate": RATE, "burst": 100})
    assert r.status_code == 400, r.text

    tag = server.config.tag
    net_ip = str(info["container_ip"])
    veth = names.link_name(tag, names.HOST_VETH, net_ip)
    ifb = names.link_name(tag, names.IFB, net_ip)
    assert "tbf" in qdiscs(veth) and "ingress" in qdiscs(veth)
    assert ifb in our_links(tag)
    r = await c.put("/containers/slow/limits/bandwidth", json={"rate": 0})
    assert r.json() == {"rate": 0, "burst": 0}
    assert "tbf" not in qdiscs(veth) and "ingress" not in qdiscs(veth)
    assert ifb not in our_links(tag)


async def test_limit_at_create(server: Server) -> None:
    c = server.client
    limits = {"bandwidth": {"rate": RATE, "burst": BURST}}
    info = await create(c, handle="born-slow", limits=limits)
    r = await c.get("/containers/born-slow/limits/bandwidth")
    assert r.json() == {"rate": RATE, "burst": BURST}
    slow_in, slow_out = both_ways(info)
    for took in (slow_in, slow_out):
        assert 3.3 < took < 6.0, (slow_in, slow_out)
    # Destroy takes the ifb with it (the fixture checks nothing is left).
