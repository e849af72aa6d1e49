"""The shared network pools the supervisor hands out from: container subnets and addresses
(dynamic /30s from `--network-pool`, or subnets and addresses a create asks for) and host ports
for net-in (`--port-pool-start`/`--port-pool-size`, or a port a request names).

Pure bookkeeping, no I/O. Every allocation becomes a fact in an event (the subnet and addresses
in `ContainerCreateStarted`, ports in `NetInMapped`), so after a restart `NetworkPools.from_state`
rebuilds exactly what was handed out, and nothing is handed out twice.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Literal, final

from garden.errors import (
    AddressInUseError,
    CapacityExhaustedError,
    InvalidRequestError,
    SubnetOverlapError,
)

DYNAMIC_PREFIX = 30


@dataclass(frozen=True)
class Address:
    """A container's place on the network: its subnet, its own address and the host side."""

    subnet: IPv4Network
    container_ip: IPv4Address
    host_ip: IPv4Address


def host_ip_of(subnet: IPv4Network) -> IPv4Address:
    """The host side of a subnet is broadcast - 1 (the seed's rule)."""
    return subnet.broadcast_address - 1


@dataclass(frozen=True)
class NetworkRequest:
    """What a create's `network` field asks for, checked against the seed's rules."""

    kind: Literal["dynamic", "subnet", "address"]
    subnet: IPv4Network | None = None
    ip: IPv4Address | None = None


def parse_network(text: str | None, pool: IPv4Network) -> NetworkRequest:
    """Parse a create's `network` field. Absent: a dynamic /30 from the pool; `a.b.c.d/n` with
    host bits zero: any free address of that subnet; with host bits set: exactly that address.
    Every 400 of the field comes from here."""
    if not text:
        return NetworkRequest(kind="dynamic")
    try:
        iface = ipaddress.ip_interface(text.strip())
    except ValueError as exc:
        raise InvalidRequestError(f"network {text!r} is not a.b.c.d/n: {exc}") from exc
    if "/" not in text or not isinstance(iface, ipaddress.IPv4Interface):
        raise InvalidRequestError(f"network {text!r} must be an IPv4 CIDR like 10.1.0.0/24")
    subnet = iface.network
    if subnet.prefixlen > DYNAMIC_PREFIX:
        raise InvalidRequestError(
            f"network {text!r}: a subnet needs room for a container, the host side and the "
            f"broadcast address (at most /{DYNAMIC_PREFIX})"
        )
    if subnet.overlaps(pool):
        raise InvalidRequestError(
            f"network {text!r} overlaps the dynamic pool {pool} (--network-pool)"
        )
    if iface.ip == subnet.network_address:
        return NetworkRequest(kind="subnet", subnet=subnet)
    if iface.ip in (subnet.broadcast_address, host_ip_of(subnet)):
        raise InvalidRequestError(
            f"network {text!r}: {iface.ip} is the broadcast address or the host side "
            f"({host_ip_of(subnet)}) of {subnet}"
        )
    return NetworkRequest(kind="address", subnet=subnet, ip=iface.ip)


@final
class SubnetPool:
    """Subnets in use and the addresses taken in each, by container handle."""

    def __init__(self, pool: IPv4Network) -> None:
        self.pool = pool
        self._slots = pool.num_addresses >> (32 - DYNAMIC_PREFIX)
        self._cursor = 0  # next-fit: a freed subnet is not reused at once
        self._by_handle: dict[str, Address] = {}
        self._taken: dict[IPv4Network, dict[IPv4Address, str]] = {}

    def take(self, handle: str, address: Address) -> None:
        """Mark an allocation recorded in the log as taken (rebuilding after a restart)."""
        self._by_handle[handle] = address
        self._taken.setdefault(address.subnet, {})[address.container_ip] = handle

    def release(self, handle: str) -> None:
        address = self._by_handle.pop(handle, None)
        if address is None:
            return
        ips = self._taken.get(address.subnet, {})
        if ips.get(address.container_ip) == handle:
            del ips[address.container_ip]
        if not ips:
            self._taken.pop(address.subnet, None)

    def get(self, handle: str) -> Address | None:
        return self._by_handle.get(handle)

    def users_of(self, subnet: IPv4Network) -> set[str]:
        return set(self._taken.get(subnet, {}).values())

    def free_dynamic(self) -> int:
        used = sum(1 for s in self._taken if s.subnet_of(self.pool))
        return self._slots - used

    def allocate(self, handle: str, request: NetworkRequest) -> Address:
        """Choose and take an address for `handle`; the errors are the seed's."""
        if handle in self._by_handle:
            raise AssertionError(f"{handle} already holds an address")
        if request.kind == "dynamic":
            address = self._next_dynamic()
        else:
            assert request.subnet is not None
            self._check_overlap(request.subnet)
            if request.kind == "subnet":
                address = self._free_in(request.subnet)
            else:
                assert request.ip is not None
                owner = self._taken.get(request.subnet, {}).get(request.ip)
                if owner is not None:
                    raise AddressInUseError(f"address {request.ip} is in use by another container")
                address = Address(request.subnet, request.ip, host_ip_of(request.subnet))
        self.take(handle, address)
        return address

    def _next_dynamic(self) -> Address:
        base = int(self.pool.network_address)
        size = 1 << (32 - DYNAMIC_PREFIX)
        for i in range(self._slots):
            slot = (self._cursor + i) % self._slots
            subnet = IPv4Network((base + slot * size, DYNAMIC_PREFIX))
            if subnet not in self._taken:
                self._cursor = (slot + 1) % self._slots
                return Address(subnet, subnet.network_address + 1, host_ip_of(subnet))
        raise CapacityExhaustedError(f"the network pool {self.pool} has no free subnet")

    def _check_overlap(self, subnet: IPv4Network) -> None:
        for other in self._taken:
            if other != subnet and other.overlaps(subnet):
                raise SubnetOverlapError(
                    f"subnet {subnet} overlaps subnet {other}, which is in use"
                )

    def _free_in(self, subnet: IPv4Network) -> Address:
        taken = self._taken.get(subnet, {})
        host = host_ip_of(subnet)
        first, last = int(subnet.network_address) + 1, int(host) - 1
        for n in range(first, last + 1):
            ip = IPv4Address(n)
            if ip not in taken:
                return Address(subnet, ip, host)
        raise CapacityExhaustedError(f"subnet {subnet} has no free address")


@final
class PortPool:
    """Host ports of net-in mappings, by container handle. Ports from the pool are handed out
    next-fit; a port a request names may lie outside the pool but must be free."""

    def __init__(self, start: int, size: int) -> None:
        self.start = start
        self.size = size
        self._cursor = 0
        self._owner: dict[int, str] = {}
        self._by_handle: dict[str, set[int]] = {}

    def take(self, handle: str, port: int) -> None:
        self._owner[port] = handle
        self._by_handle.setdefault(handle, set()).add(port)

    def release(self, handle: str, port: int | None = None) -> None:
        ports = self._by_handle.get(handle, set())
        for p in [port] if port is not None else list(ports):
            if self._owner.get(p) == handle:
                del self._owner[p]
            ports.discard(p)
        if not ports:
            self._by_handle.pop(handle, None)

    def owner(self, port: int) -> str | None:
        return self._owner.get(port)

    def free(self) -> int:
        end = self.start + self.size
        return self.size - sum(1 for p in self._owner if self.start <= p < end)

    def allocate(self, handle: str, requested: int = 0) -> int:
        if requested:
            if not 1 <= requested <= 65535:
                raise InvalidRequestError(f"host_port {requested} is not a TCP port")
            if requested in self._owner:
                raise AddressInUseError(f"host port {requested} is already mapped")
            self.take(handle, requested)
            return requested
        for i in range(self.size):
            slot = (self._cursor + i) % self.size
            port = self.start + slot
            if port not in self._owner:
                self._cursor = (slot + 1) % self.size
                self.take(handle, port)
                return port
        raise CapacityExhaustedError(
            f"the host port pool {self.start}-{self.start + self.size - 1} has no free port"
        )


@dataclass(frozen=True)
class Holding:
    """What one container holds, as the state (and so the log) records it."""

    handle: str
    address: Address | None
    host_ports: Iterable[int]


@final
class NetworkPools:
    def __init__(self, pool: IPv4Network, port_start: int, port_size: int) -> None:
        self.subnets = SubnetPool(pool)
        self.ports = PortPool(port_start, port_size)

    @classmethod
    def rebuild(
        cls, pool: IPv4Network, port_start: int, port_size: int, holdings: Iterable[Holding]
    ) -> NetworkPools:
        pools = cls(pool, port_start, port_size)
        for h in holdings:
            if h.address is not None:
                pools.subnets.take(h.handle, h.address)
            for port in h.host_ports:
                pools.ports.take(h.handle, port)
        return pools

    def release(self, handle: str) -> None:
        self.subnets.release(handle)
        self.ports.release(handle)
