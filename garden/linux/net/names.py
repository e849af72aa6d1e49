"""Names of the kernel objects of container networking, all derived from the server's tag and
the addresses recorded in the log, so that they can be found again after a crash.

Interface names are at most 15 characters: the tag (at most 8, lowercase), one upper-case
letter for the kind, and 6 base-62 characters of an IPv4 address (62**6 > 2**32). Tags are
lowercase, so the kind letter also ends the tag: `t1V...` can never be a link of tag `t1v`.
Live containers never share an address, so live names never collide.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from garden.linux.plan import NetworkPlan

Kind = Literal["V", "C", "B", "I"]
HOST_VETH: Kind = "V"  # host end of a container's veth pair
CONTAINER_END: Kind = "C"  # its other end, made in the container's namespace, renamed to eth0
BRIDGE: Kind = "B"  # one per shared subnet (prefix shorter than /30)
IFB: Kind = "I"  # shapes the container's outbound traffic when it has a bandwidth limit
CONTAINER_IFACE = "eth0"  # the container end, inside its network namespace

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_WIDTH = 6


def encode_ip(ip: str) -> str:
    n = int(ipaddress.IPv4Address(ip))
    out = []
    for _ in range(_WIDTH):
        n, digit = divmod(n, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def decode_ip(text: str) -> str:
    n = 0
    for ch in text:
        n = n * 62 + _ALPHABET.index(ch)
    return str(ipaddress.IPv4Address(n))


def link_name(tag: str, kind: Kind, ip: str) -> str:
    return f"{tag}{kind}{encode_ip(ip)}"


def is_ours(tag: str, name: str) -> bool:
    return (
        len(name) == len(tag) + 1 + _WIDTH
        and name.startswith(tag)
        and name[len(tag)] in ("V", "C", "B", "I")
    )


def bridged(net: NetworkPlan) -> bool:
    """A /30 holds one container: its veth carries the host address itself. Wider subnets
    are shared through a bridge that carries it."""
    return ipaddress.IPv4Network(net.subnet).prefixlen < 30


def subnet_address(net: NetworkPlan) -> str:
    return str(ipaddress.IPv4Network(net.subnet).network_address)


def prefixlen(net: NetworkPlan) -> int:
    return ipaddress.IPv4Network(net.subnet).prefixlen


def host_veth(tag: str, net: NetworkPlan) -> str:
    return link_name(tag, HOST_VETH, net.container_ip)


def bridge(tag: str, net: NetworkPlan) -> str:
    return link_name(tag, BRIDGE, subnet_address(net))


def ifb(tag: str, net: NetworkPlan) -> str:
    return link_name(tag, IFB, net.container_ip)


def gateway_link(tag: str, net: NetworkPlan) -> str:
    """The host-side link that carries the host address of the container's subnet."""
    return bridge(tag, net) if bridged(net) else host_veth(tag, net)


def owned_links(tag: str, nets: list[NetworkPlan], limited: set[str]) -> set[str]:
    """The link names the given live containers own; `limited` holds the container ips
    with a bandwidth limit (they own an ifb)."""
    names: set[str] = set()
    for net in nets:
        names.add(host_veth(tag, net))
        if bridged(net):
            names.add(bridge(tag, net))
        if net.container_ip in limited:
            names.add(ifb(tag, net))
    return names
