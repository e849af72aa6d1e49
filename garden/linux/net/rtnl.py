"""A small rtnetlink client: the handful of link, address and route requests container
networking needs, each one message and one acknowledgement on a raw netlink socket.

Why not pyroute2: its sync `IPRoute` drives an asyncio loop per call and keeps its socket per
thread, which cost 1-2 ms per request on this machine under load (a container's set-up needs
about ten) and made an instance used from another thread silently talk to the host's
namespace. A raw socket is bound to the namespace it was opened in, whichever thread uses it,
and a request costs tens of microseconds.

Blocking; callers run it in a worker thread. One `Rtnl` per call site, never shared.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x200, 0x400, 0x300
IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 3, 4, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY = 5
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")


def _attr(kind: int, data: bytes) -> bytes:
    size = _RTATTR.size + len(data)
    return _RTATTR.pack(size, kind) + data + b"\0" * (-size % 4)


def _name(kind: int, name: str) -> bytes:
    return _attr(kind, name.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + _RTATTR.size <= len(data):
        size, kind = _RTATTR.unpack_from(data, off)
        if size < _RTATTR.size:
            return
        yield kind & 0x3FFF, data[off + _RTATTR.size : off + size]
        off += (size + 3) & ~3


class Rtnl:
    """One rtnetlink socket in the network namespace of the calling thread at creation (see
    `in_netns`). Requests raise `OSError` with the kernel's errno."""

    _seq_lock = threading.Lock()
    _seq = 0

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)  # fmt: skip
        self.sock.bind((0, 0))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def _next_seq(cls) -> int:
        with cls._seq_lock:
            cls._seq = (cls._seq + 1) & 0xFFFFFFFF
            return cls._seq

    def _request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return the (type, payload) messages of its answer. An error
        answer raises OSError."""
        seq = self._next_seq()
        msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0)
        self.sock.send(msg + body)
        out: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                size, mtype, mflags, mseq, _ = _NLMSGHDR.unpack_from(data, off)
                payload = data[off + _NLMSGHDR.size : off + size]
                off += (size + 3) & ~3
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return out
                if mtype == NLMSG_DONE:
                    return out
                out.append((mtype, payload))
                if not mflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return out

    # -- links ------------------------------------------------------------------------------

    def index(self, name: str) -> int | None:
        try:
            answer = self._request(RTM_GETLINK, 0, _ifinfo() + _name(IFLA_IFNAME, name))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        for mtype, payload in answer:
            if mtype == RTM_NEWLINK:
                return int(_IFINFOMSG.unpack_from(payload)[2])
        return None

    def links(self) -> list[str]:
        names = []
        for mtype, payload in self._request(RTM_GETLINK, NLM_F_DUMP, _ifinfo()):
            if mtype != RTM_NEWLINK:
                continue
            for kind, value in _attrs(payload[_IFINFOMSG.size :]):
                if kind == IFLA_IFNAME:
                    names.append(value.rstrip(b"\0").decode())
        return names

    def add_link(self, name: str, kind: str, mtu: int = 0) -> None:
        attrs = _name(IFLA_IFNAME, name) + _attr(IFLA_LINKINFO, _name(IFLA_INFO_KIND, kind))
        if mtu:
            attrs += _u32(IFLA_MTU, mtu)
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, _ifinfo() + attrs)

    def add_veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int = 0) -> None:
        """A veth pair whose `peer` end is created directly in the namespace of the fd (no
        move afterwards: a move waits for an RCU grace period)."""
        peer_attrs = _name(IFLA_IFNAME, peer) + _u32(IFLA_NET_NS_FD, peer_netns_fd)
        attrs = _name(IFLA_IFNAME, name)
        if mtu:
            peer_attrs += _u32(IFLA_MTU, mtu)
            attrs += _u32(IFLA_MTU, mtu)
        info = _name(IFLA_INFO_KIND, "veth") + _attr(
            IFLA_INFO_DATA, _attr(VETH_INFO_PEER, _ifinfo() + peer_attrs)
        )
        attrs += _attr(IFLA_LINKINFO, info)
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, _ifinfo() + attrs)

    def set_link(
        self, index: int, *, up: bool | None = None, master: int | None = None,
        name: str | None = None,
    ) -> None:  # fmt: skip
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        attrs = b""
        if master is not None:
            attrs += _u32(IFLA_MASTER, master)
        if name is not None:
            attrs += _name(IFLA_IFNAME, name)
        self._request(RTM_NEWLINK, NLM_F_ACK, _ifinfo(index, flags, change) + attrs)

    def delete_link(self, index: int) -> None:
        self._request(RTM_DELLINK, NLM_F_ACK, _ifinfo(index))

    # -- addresses and routes ---------------------------------------------------------------

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        packed = ipaddress.IPv4Address(address).packed
        body = _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, body)

    def add_default_route(self, gateway: str) -> None:
        body = _RTMSG.pack(
            socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
        )
        body += _attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, body)
