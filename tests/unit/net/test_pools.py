"""The address and port pools: the seed's rules, exhaustion, release, next-fit, and that a
pool rebuilt from holdings (what the log records) never hands out a taken address or port."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garden.actors.pools import (
    Address,
    Holding,
    NetworkPools,
    PortPool,
    SubnetPool,
    parse_network,
)
from garden.errors import (
    AddressInUseError,
    CapacityExhaustedError,
    InvalidRequestError,
    SubnetOverlapError,
)

POOL = IPv4Network("10.254.0.0/22")


def test_dynamic_is_a_30_with_container_first_and_host_broadcast_minus_one() -> None:
    pool = SubnetPool(POOL)
    a = pool.allocate("a", parse_network(None, POOL))
    assert (str(a.subnet), str(a.container_ip), str(a.host_ip)) == (
        "10.254.0.0/30",
        "10.254.0.1",
        "10.254.0.2",
    )
    b = pool.allocate("b", parse_network("", POOL))
    assert str(b.subnet) == "10.254.0.4/30"


def test_dynamic_is_next_fit_and_wraps() -> None:
    pool = SubnetPool(IPv4Network("10.0.0.0/29"))
    a = pool.allocate("a", parse_network(None, POOL))
    pool.allocate("b", parse_network(None, POOL))
    with pytest.raises(CapacityExhaustedError):
        pool.allocate("c", parse_network(None, POOL))
    pool.release("a")
    assert pool.free_dynamic() == 1
    assert pool.allocate("c", parse_network(None, POOL)) == Address(
        a.subnet, a.container_ip, a.host_ip
    )
    pool.release("b")
    pool.release("c")
    # After a release the next allocation moves on rather than reusing the freed subnet.
    d = pool.allocate("d", parse_network(None, POOL))
    assert str(d.subnet) == "10.0.0.4/30"


def test_static_subnets_are_shared_and_exact_addresses_taken_once() -> None:
    pool = SubnetPool(POOL)
    a = pool.allocate("a", parse_network("10.1.0.0/24", POOL))
    b = pool.allocate("b", parse_network("10.1.0.0/24", POOL))
    assert (str(a.container_ip), str(b.container_ip)) == ("10.1.0.1", "10.1.0.2")
    assert str(a.host_ip) == "10.1.0.254"
    c = pool.allocate("c", parse_network("10.1.0.9/24", POOL))
    assert str(c.container_ip) == "10.1.0.9"
    with pytest.raises(AddressInUseError):
        pool.allocate("d", parse_network("10.1.0.9/24", POOL))
    with pytest.raises(AddressInUseError):
        pool.allocate("d", parse_network("10.1.0.2/24", POOL))
    with pytest.raises(SubnetOverlapError):
        pool.allocate("d", parse_network("10.1.0.128/25", POOL))
    with pytest.raises(SubnetOverlapError):
        pool.allocate("d", parse_network("10.1.0.0/16", POOL))
    assert pool.users_of(IPv4Network("10.1.0.0/24")) == {"a", "b", "c"}
    for h in ("a", "b", "c"):
        pool.release(h)
    # Once empty, an overlapping subnet is fine.
    pool.allocate("d", parse_network("10.1.0.128/25", POOL))


def test_a_full_static_subnet() -> None:
    pool = SubnetPool(POOL)
    only = pool.allocate("a", parse_network("10.9.0.0/30", POOL))
    assert (str(only.container_ip), str(only.host_ip)) == ("10.9.0.1", "10.9.0.2")
    with pytest.raises(CapacityExhaustedError):
        pool.allocate("b", parse_network("10.9.0.0/30", POOL))


@pytest.mark.parametrize(
    "text",
    [
        "nonsense",
        "10.1.0.0",  # no prefix
        "10.254.1.0/24",  # overlaps the pool
        "10.0.0.0/8",  # contains the pool
        "10.1.0.0/31",
        "10.1.0.0/32",
        "10.1.0.255/24",  # broadcast
        "10.1.0.254/24",  # the host side
        "fd00::/64",
    ],
)
def test_bad_requests_are_400(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_network(text, POOL)


def test_ports() -> None:
    ports = PortPool(61000, 3)
    assert [ports.allocate("a") for _ in range(2)] == [61000, 61001]
    assert ports.allocate("b", 80) == 80  # outside the pool: fine when free
    with pytest.raises(AddressInUseError):
        ports.allocate("c", 61001)
    with pytest.raises(AddressInUseError):
        ports.allocate("c", 80)
    assert ports.allocate("b") == 61002
    with pytest.raises(CapacityExhaustedError):
        ports.allocate("c")
    assert ports.free() == 0
    ports.release("a")
    assert ports.free() == 2
    assert ports.allocate("c") == 61000  # wrapped around
    ports.release("b", 80)
    assert ports.owner(80) is None
    assert ports.owner(61002) == "b"
    with pytest.raises(InvalidRequestError):
        ports.allocate("c", 70000)


@given(
    st.lists(st.tuples(st.sampled_from(["alloc", "port", "free"]), st.integers(0, 5)), max_size=60)
)
def test_rebuilt_pools_never_hand_out_a_taken_address(ops: list[tuple[str, int]]) -> None:
    """Whatever happened before, pools rebuilt from what is held behave like the live ones:
    no address or port is held twice."""
    live = NetworkPools(IPv4Network("10.0.0.0/28"), 100, 4)
    held: dict[str, tuple[Address, list[int]]] = {}
    for op, n in ops:
        handle = f"h{n}"
        try:
            if op == "alloc" and handle not in held:
                held[handle] = (live.subnets.allocate(handle, parse_network(None, POOL)), [])
            elif op == "port" and handle in held:
                held[handle][1].append(live.ports.allocate(handle))
            elif op == "free" and handle in held:
                live.release(handle)
                del held[handle]
        except CapacityExhaustedError:
            pass
        rebuilt = NetworkPools.rebuild(
            IPv4Network("10.0.0.0/28"),
            100,
            4,
            [Holding(h, addr, ports) for h, (addr, ports) in held.items()],
        )
        for pools in (live, rebuilt):
            assert pools.subnets.free_dynamic() == 4 - len(held)
            assert pools.ports.free() == 4 - sum(len(p) for _, p in held.values())
        ips = [a.container_ip for a, _ in held.values()]
        assert len(set(ips)) == len(ips)
        try:
            fresh = rebuilt.subnets.allocate("new", parse_network(None, POOL))
        except CapacityExhaustedError:
            continue
        assert fresh.container_ip not in ips
        assert fresh.container_ip == IPv4Address(int(fresh.subnet.network_address) + 1)
