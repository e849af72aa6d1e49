"""The supervisor and container actors' networking on fakes: addresses and ports from the
pools into the log and back out on destroy, undo of a failed network set-up, net-out rules and
bandwidth limits as events, and pools rebuilt after a restart without handing anything out
twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from garden.api import BandwidthLimits, NetOutRule
from garden.errors import AddressInUseError, CapacityExhaustedError, InvalidRequestError
from garden.linux.net.netlink import NetworkError
from garden.linux.plan import Bandwidth, PortMap
from tests.unit.fakes import FakeKernel, FakeNetworker
from tests.unit.test_supervisor import ORIGIN, make_config, running, spec


async def test_addresses_and_ports_come_and_go(tmp_path: Path) -> None:
    net = FakeNetworker()
    config = make_config(tmp_path, port_pool_start=61000, port_pool_size=2)
    async with running(config, FakeKernel(), net) as (sup, log):
        await sup.create(spec(handle="a"), ORIGIN)
        await sup.create(spec(handle="b", network="10.9.0.7/24"), ORIGIN)
        a, b = sup.info("a"), sup.info("b")
        assert (a.container_ip, a.host_ip) == ("10.254.0.1", "10.254.0.2")
        assert (b.container_ip, b.host_ip) == ("10.9.0.7", "10.9.0.254")
        assert sup.capacity().max_containers == 255

        m = await sup.net_in("a", 0, 8080, ORIGIN)
        assert (m.host_port, m.container_port) == (61000, 8080)
        m = await sup.net_in("b", 0, 0, ORIGIN)
        assert (m.host_port, m.container_port) == (61001, 61001)
        with pytest.raises(CapacityExhaustedError):
            await sup.net_in("b", 0, 0, ORIGIN)
        with pytest.raises(AddressInUseError):
            await sup.net_in("b", 61000, 0, ORIGIN)
        with pytest.raises(InvalidRequestError):
            await sup.net_in("b", 0, 70000, ORIGIN)
        assert net.mapped == {61000: ("a", 8080), 61001: ("b", 61001)}
        assert [(p.host_port, p.container_port) for p in sup.info("a").mapped_ports] == [
            (61000, 8080)
        ]
        types = [type(r.event).__name__ for r in log.records()]
        assert types.count("NetInMapped") == 2

        await sup.destroy("a", ORIGIN)
        assert ("teardown", "a") in net.calls
        assert 61000 not in net.mapped
        # Its port and subnet are free again at once.
        assert (await sup.net_in("b", 0, 0, ORIGIN)).host_port == 61000
        with pytest.raises(AddressInUseError):
            await sup.create(spec(handle="c", network="10.9.0.7/24"), ORIGIN)
        await sup.destroy("b", ORIGIN)
        await sup.create(spec(handle="c", network="10.9.0.7/24"), ORIGIN)


async def test_failed_network_setup_undoes_the_create(tmp_path: Path) -> None:
    net, kernel = FakeNetworker(), FakeKernel()
    net.fail_setup.add("bad")
    async with running(make_config(tmp_path), kernel, net) as (sup, log):
        with pytest.raises(NetworkError):
            await sup.create(spec(handle="bad"), ORIGIN)
        assert ("destroy", "bad") in kernel.calls
        assert kernel.live == {}
        assert "bad" not in sup.state.containers
        types = [type(r.event).__name__ for r in log.records()]
        assert types[-2:] == ["ContainerCreateStarted", "ContainerCreateFailed"]
        assert sup.capacity().max_containers == 256
        net.fail_setup.clear()
        await sup.create(spec(handle="bad"), ORIGIN)


async def test_rules_and_bandwidth_are_recorded(tmp_path: Path) -> None:
    net = FakeNetworker()
    async with running(make_config(tmp_path), FakeKernel(), net) as (sup, _):
        limits = {"bandwidth": {"rate": 1000, "burst": 2000}}
        await sup.create(spec(handle="c", limits=limits), ORIGIN)
        assert net.bandwidth["c"] == Bandwidth(rate=1000, burst=2000)
        assert sup.bandwidth("c") == BandwidthLimits(rate=1000, burst=2000)
        await sup.net_out("c", NetOutRule(network="10.0.0.0/8", port=53, protocol="udp"), ORIGIN)
        assert sup.state.containers["c"].net_out[0].ports == [(53, 53)]
        with pytest.raises(InvalidRequestError):
            await sup.net_out("c", NetOutRule(port=53), ORIGIN)
        net.calls.clear()
        same = await sup.limit_bandwidth("c", BandwidthLimits(), ORIGIN)
        assert same == BandwidthLimits(rate=1000, burst=2000)
        assert net.calls == []  # nothing changed, nothing done
        await sup.limit_bandwidth("c", BandwidthLimits(rate=5000), ORIGIN)
        assert net.bandwidth["c"] == Bandwidth(rate=5000, burst=2000)
        await sup.limit_bandwidth("c", BandwidthLimits(rate=0), ORIGIN)
        assert "c" not in net.bandwidth
        assert sup.bandwidth("c") == BandwidthLimits(rate=0, burst=0)


async def test_restart_restores_and_never_hands_out_twice(tmp_path: Path) -> None:
    config = make_config(tmp_path, port_pool_start=61000, port_pool_size=10)
    kernel = FakeKernel()
    async with running(config, kernel, FakeNetworker()) as (sup, _):
        await sup.create(spec(handle="a"), ORIGIN)
        await sup.create(spec(handle="gone"), ORIGIN)
        await sup.create(spec(handle="b", network="10.9.0.0/24"), ORIGIN)
        await sup.net_in("a", 0, 80, ORIGIN)
        await sup.net_in("b", 61005, 80, ORIGIN)
        await sup.net_out("b", NetOutRule(protocol="tcp"), ORIGIN)
        await sup.destroy("gone", ORIGIN)
    net = FakeNetworker()
    async with running(config, kernel, net) as (sup, _):
        restored = {c.plan.handle: c for c in net.restored}
        assert sorted(restored) == ["a", "b"]
        assert restored["a"].wiring.mapped_ports == [PortMap(host_port=61000, container_port=80)]
        assert len(restored["b"].wiring.rules) == 1
        assert restored["b"].plan.network is not None
        assert restored["b"].plan.network.container_ip == "10.9.0.1"
        with pytest.raises(AddressInUseError):
            await sup.net_in("a", 61005, 0, ORIGIN)
        await sup.create(spec(handle="c"), ORIGIN)
        await sup.create(spec(handle="d", network="10.9.0.0/24"), ORIGIN)
        assert sup.info("c").container_ip != "10.254.0.1"
        assert sup.info("d").container_ip == "10.9.0.2"
        ports = {(await sup.net_in("c", 0, 0, ORIGIN)).host_port for _ in range(8)}
        assert ports.isdisjoint({61000, 61005})
