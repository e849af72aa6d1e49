"""Checks and normalises the network requests (net-in, net-out rules, bandwidth limits) before
anything is recorded: every 400 of these routes comes from here. Pure."""

from __future__ import annotations

import ipaddress

from garden.api import BandwidthLimits, NetOutRule
from garden.errors import InvalidRequestError
from garden.linux.plan import Bandwidth, FirewallRule

# A token bucket smaller than one full-size frame never lets that frame through.
MIN_BURST = 1514
MAX_RATE = 2**40  # 1 TiB/s: beyond anything a veth does; keeps tc's 32-bit fields sane


def check_port(value: int, what: str) -> int:
    if not 1 <= value <= 65535:
        raise InvalidRequestError(f"{what} {value} is not a port (1-65535)")
    return value


def normalise_rule(rule: NetOutRule) -> FirewallRule:
    """The wire rule as a `FirewallRule`; a rule that cannot mean anything is a 400."""
    networks: list[tuple[str, str]] = []
    if rule.network:
        networks.append(_parse_range(rule.network))
    ports: list[tuple[int, int]] = []
    if rule.port is not None:
        p = check_port(rule.port, "port")
        ports.append((p, p))
    if rule.port_range:
        ports.append(_parse_port_range(rule.port_range))
    if ports and rule.protocol not in ("tcp", "udp"):
        raise InvalidRequestError("port and port_range need protocol tcp or udp")
    has_icmp = rule.icmp_type is not None or rule.icmp_code is not None
    if has_icmp and rule.protocol != "icmp":
        raise InvalidRequestError("icmp_type and icmp_code need protocol icmp")
    if rule.icmp_code is not None and rule.icmp_type is None:
        raise InvalidRequestError("icmp_code needs icmp_type")
    for name, value in (("icmp_type", rule.icmp_type), ("icmp_code", rule.icmp_code)):
        if value is not None and not 0 <= value <= 255:
            raise InvalidRequestError(f"{name} {value} is not 0-255")
    return FirewallRule(
        networks=networks,
        ports=ports,
        protocol=rule.protocol,
        icmp_type=rule.icmp_type,
        icmp_code=rule.icmp_code,
        log=rule.log,
    )


def _parse_range(text: str) -> tuple[str, str]:
    try:
        if "-" in text:
            first_s, last_s = text.split("-", 1)
            first = ipaddress.IPv4Address(first_s.strip())
            last = ipaddress.IPv4Address(last_s.strip())
        else:
            net = ipaddress.IPv4Network(text.strip(), strict=False)
            first, last = net.network_address, net.broadcast_address
    except ValueError as exc:
        raise InvalidRequestError(
            f"network {text!r} must be an IPv4 CIDR or a range a.b.c.d-e.f.g.h: {exc}"
        ) from exc
    if first > last:
        raise InvalidRequestError(f"network {text!r}: the range runs backwards")
    return str(first), str(last)


def _parse_port_range(text: str) -> tuple[int, int]:
    try:
        lo_s, hi_s = text.split(":", 1)
        lo, hi = int(lo_s), int(hi_s)
    except ValueError as exc:
        raise InvalidRequestError(f"port_range {text!r} must look like 8000:8080") from exc
    check_port(lo, "port_range start")
    check_port(hi, "port_range end")
    if lo > hi:
        raise InvalidRequestError(f"port_range {text!r} runs backwards")
    return lo, hi


def bandwidth_after(request: BandwidthLimits, current: Bandwidth | None) -> Bandwidth | None:
    """The limit in force after a PUT of `request`: absent fields keep their value; rate 0
    removes the limit. A burst below one full-size frame is a 400 (tbf would stall)."""
    rate = request.rate if request.rate is not None else (current.rate if current else 0)
    burst = request.burst if request.burst is not None else (current.burst if current else 0)
    if rate < 0 or burst < 0:
        raise InvalidRequestError("bandwidth rate and burst must be >= 0")
    if rate > MAX_RATE or burst > MAX_RATE:
        raise InvalidRequestError(f"bandwidth rate and burst must be <= {MAX_RATE}")
    if rate == 0:
        return None
    if burst < MIN_BURST:
        raise InvalidRequestError(
            f"bandwidth burst must be at least {MIN_BURST} bytes (one full-size frame)"
        )
    return Bandwidth(rate=rate, burst=burst)


def check_bandwidth(limits: BandwidthLimits | None) -> Bandwidth | None:
    """A create-time `limits.bandwidth`: the same rules as a PUT onto no limit."""
    if limits is None:
        return None
    return bandwidth_after(limits, None)
