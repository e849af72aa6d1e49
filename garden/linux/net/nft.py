"""The server's own nftables table (`table ip <tag>`): its layout, the commands that change
it, and a small binding of libnftables (in-process, no fork; the `nft` binary is the fallback).

Layout. Per-container state lives in sets and maps, so a container without net-in mappings or
net-out rules has nothing in the table, and adding a container's state is an element insert:

- `subnets`: the pool and every static subnet in use; traffic from them to anywhere else is
  masqueraded. `same_subnet`: (subnet . subnet) of each static subnet, whose containers may
  always reach each other.
- `netin`: host port -> container address . port, used by DNAT in prerouting (traffic from
  other machines) and in output (clients on this host, including 127.0.0.1).
- `deny`: the `--deny-network` ranges; forwarded traffic from our links to them jumps to
  `netout`, which lets replies through, then jumps by source address (`netout_holes`) to the
  container's own chain of holes (`out_<ip>`), and rejects what is left.
- Loopback clients: a packet from 127.0.0.1 DNATed to a container leaves through our link only
  because our links have `route_localnet` set, and is masqueraded to the host address there.
  `guard` drops packets that arrive on our links for 127.0.0.0/8 (the known hole that
  route_localnet opens, CVE-2020-8558).

Every element and rule of a container carries its handle as comment. Deleting anything in
nftables waits for an RCU grace period (12-16 ms here) while adding takes 0.3 ms, so deletions
of one container go in one transaction, and only when it has something to delete.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import ipaddress
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from garden.errors import KernelError
from garden.linux.net import names
from garden.linux.plan import FirewallRule, NetworkPlan, PortMap

NFT_COMMENT_MAX = 128
LOG_PREFIX_MAX = 127


class NftError(KernelError):
    pass


class Nft:
    """Runs nft scripts; each call is one atomic transaction. Thread-safe (one libnftables
    context per call)."""

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None
        self._nft = shutil.which("nft") or "/usr/sbin/nft"
        path = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            return
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._lock = threading.Lock()  # libnftables keeps a little global state (e.g. caches)

    def run(self, script: str, what: str = "nft") -> str:
        """Run `script` as one transaction (blocking); its output, or `NftError`.

        libnftables 1.0.6 waits for the kernel's answer with select(), which aborts the whole
        process (glibc: "bit out of range 0 - FD_SETSIZE on fd_set") when its netlink socket
        gets a descriptor number of 1024 or more, as it does once a server holds a pidfd and
        an OOM eventfd for each of 1,000 containers. Then the `nft` binary (its own, low,
        descriptors) runs the script instead."""
        if self._lib is None or not _low_fds_free():
            proc = subprocess.run(
                [self._nft, "-f", "-"], input=script.encode(), capture_output=True, check=False
            )
            if proc.returncode != 0:
                raise NftError(what, proc.stderr.decode(errors="replace").strip())
            return proc.stdout.decode()
        lib = self._lib
        with self._lock:
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise NftError(what, "nft_ctx_new failed")
            try:
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
                out = lib.nft_ctx_get_output_buffer(ctx) or b""
                err = lib.nft_ctx_get_error_buffer(ctx) or b""
            finally:
                lib.nft_ctx_free(ctx)
        if rc != 0:
            raise NftError(what, err.decode(errors="replace").strip())
        return out.decode(errors="replace")


FD_SETSIZE = 1024
_FD_MARGIN = 128  # descriptors other threads may open between the check and the call


def _low_fds_free() -> bool:
    """True if the next descriptors this process opens are well below FD_SETSIZE."""
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    return fd < FD_SETSIZE - _FD_MARGIN


# -- the text of the table and its changes (pure) -----------------------------------------------


def table_name(tag: str) -> str:
    return tag


def chain_of(net: NetworkPlan) -> str:
    return f"out_{names.encode_ip(net.container_ip)}"


def comment(handle: str) -> str:
    return f'comment "{handle[:NFT_COMMENT_MAX]}"'


@dataclass(frozen=True)
class ContainerNft:
    """One container's part of the table."""

    handle: str
    net: NetworkPlan
    mapped_ports: Sequence[PortMap] = ()
    rules: Sequence[FirewallRule] = ()
    static_subnet: bool = False


@dataclass(frozen=True)
class TableSpec:
    tag: str
    pool: str
    deny: Sequence[str] = ()
    containers: Sequence[ContainerNft] = field(default_factory=list)


def _elements(items: Iterable[str]) -> str:
    return ", ".join(items)


def table_script(spec: TableSpec) -> str:
    """The whole table, replacing whatever is there in one transaction (start-up: restores
    every container's state from the log and drops what no container owns)."""
    t = table_name(spec.tag)
    v, b = f"{spec.tag}{names.HOST_VETH}*", f"{spec.tag}{names.BRIDGE}*"
    subnets = [spec.pool]
    for c in spec.containers:
        if c.static_subnet and c.net.subnet not in subnets:
            subnets.append(c.net.subnet)
    deny = f"elements = {{ {_elements(spec.deny)} }}" if spec.deny else ""
    static = subnets[1:]
    same = f"elements = {{ {_elements(f'{s} . {s}' for s in static)} }}" if static else ""
    lines = [
        f"add table ip {t}",
        f"delete table ip {t}",
        f"""table ip {t} {{
  set deny {{
    type ipv4_addr; flags interval; auto-merge;
    {deny}
  }}
  set subnets {{
    type ipv4_addr; flags interval; auto-merge;
    elements = {{ {_elements(subnets)} }}
  }}
  set same_subnet {{
    type ipv4_addr . ipv4_addr; flags interval;
    {same}
  }}
  map netin {{
    type inet_service : ipv4_addr . inet_service
  }}
  map netout_holes {{
    type ipv4_addr : verdict
  }}
  chain guard {{
    type filter hook prerouting priority raw; policy accept;
    iifname "{v}" ip daddr 127.0.0.0/8 drop
    iifname "{b}" ip daddr 127.0.0.0/8 drop
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local dnat ip to tcp dport map @netin
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    fib daddr type local dnat ip to tcp dport map @netin
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{v}" ip saddr 127.0.0.0/8 masquerade
    oifname "{b}" ip saddr 127.0.0.0/8 masquerade
    ip saddr @subnets ct status dnat masquerade
    ip saddr @subnets ip daddr != @subnets masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ip saddr . ip daddr @same_subnet accept
    iifname "{v}" ip daddr @deny jump netout
    iifname "{b}" ip daddr @deny jump netout
  }}
  chain netout {{
    ct state established,related accept
    ip saddr vmap @netout_holes
    reject with icmp type admin-prohibited
  }}
}}""",
    ]
    for c in spec.containers:
        for m in c.mapped_ports:
            lines.append(net_in_line(spec.tag, c.handle, c.net, m))
        for rule in c.rules:
            lines.extend(net_out_lines(spec.tag, c.handle, c.net, rule))
    return "\n".join(lines) + "\n"


def delete_table_script(tag: str) -> str:
    t = table_name(tag)
    return f"add table ip {t}\ndelete table ip {t}\n"


def net_in_line(tag: str, handle: str, net: NetworkPlan, m: PortMap) -> str:
    return (
        f"add element ip {table_name(tag)} netin {{ {m.host_port} {comment(handle)} : "
        f"{net.container_ip} . {m.container_port} }}"
    )


def net_out_lines(tag: str, handle: str, net: NetworkPlan, rule: FirewallRule) -> list[str]:
    t, chain = table_name(tag), chain_of(net)
    return [
        f"add chain ip {t} {chain}",
        f"add rule ip {t} {chain} {rule_expr(tag, handle, rule)} {comment(handle)}",
        f"add element ip {t} netout_holes {{ {net.container_ip} {comment(handle)} : "
        f"jump {chain} }}",
    ]


def static_subnet_lines(tag: str, net: NetworkPlan, op: str = "add") -> list[str]:
    """A static subnet is masqueraded like the pool, and its containers reach each other
    whatever the denied networks (with br_netfilter, traffic inside a bridge passes the
    forward hook too)."""
    t = table_name(tag)
    return [
        f"{op} element ip {t} subnets {{ {net.subnet} }}",
        f"{op} element ip {t} same_subnet {{ {net.subnet} . {net.subnet} }}",
    ]


def teardown_script(
    tag: str, net: NetworkPlan, mapped_ports: Sequence[PortMap], has_rules: bool
) -> str:
    """Remove one container's elements and chain in one transaction. Each deletion follows an
    add of the same thing, so the script succeeds whether or not it was there. Empty when
    there is nothing to remove. (Interval sets do not allow that trick: a static subnet is
    removed on its own, see `static_subnet_lines`.)"""
    t = table_name(tag)
    lines: list[str] = []
    for m in mapped_ports:
        lines.append(
            f"add element ip {t} netin {{ {m.host_port} : {net.container_ip} . "
            f"{m.container_port} }}"
        )
        lines.append(f"delete element ip {t} netin {{ {m.host_port} }}")
    if has_rules:
        chain = chain_of(net)
        lines += [
            f"add chain ip {t} {chain}",
            f"add element ip {t} netout_holes {{ {net.container_ip} : jump {chain} }}",
            f"delete element ip {t} netout_holes {{ {net.container_ip} }}",
            f"flush chain ip {t} {chain}",
            f"delete chain ip {t} {chain}",
        ]
    return "\n".join(lines) + "\n" if lines else ""


def rule_expr(tag: str, handle: str, rule: FirewallRule) -> str:
    """The match of one net-out hole, ending in its verdict (accept, logged when asked)."""
    parts: list[str] = []
    if rule.networks:
        ranges = [a if a == b else f"{a}-{b}" for a, b in rule.networks]
        parts.append(f"ip daddr {_set_of(ranges)}")
    if rule.protocol in ("tcp", "udp"):
        if rule.ports:
            ports = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in rule.ports]
            parts.append(f"{rule.protocol} dport {_set_of(ports)}")
        else:
            parts.append(f"meta l4proto {rule.protocol}")
    elif rule.protocol == "icmp":
        parts.append("meta l4proto icmp")
        if rule.icmp_type is not None:
            parts.append(f"icmp type {rule.icmp_type}")
        if rule.icmp_code is not None:
            parts.append(f"icmp code {rule.icmp_code}")
    if rule.log:
        prefix = f"{tag}-out {handle}: "[:LOG_PREFIX_MAX]
        parts.append(f'log prefix "{prefix}"')
    parts.append("accept")
    return " ".join(parts)


def _set_of(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def is_static(net: NetworkPlan, pool: str) -> bool:
    return _is_static(net.subnet, pool)


@functools.lru_cache(maxsize=4096)
def _is_static(subnet: str, pool: str) -> bool:
    # Cached: a restart asks twice for each container, and parsing is not cheap.
    return not ipaddress.IPv4Network(subnet).subnet_of(ipaddress.IPv4Network(pool))
