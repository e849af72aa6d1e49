"""Links and addresses: the host end of a container's veth, the bridge of a shared subnet, the
ifb of a bandwidth limit, and the container end inside the container's network namespace.

Every function here blocks; callers run them with `trio.to_thread.run_sync`. Requests go
through `rtnl.Rtnl`, one raw netlink socket per call.

Measured on this machine (docs/adr/0002-networking.md): moving a veth into a namespace waits
for an RCU grace period (~16 ms), so the pair is created with its container end already in the
container's namespace (~1.6 ms). The inside is configured through a netlink socket opened in
that namespace by a short-lived thread that `setns`es there and back. Deleting a link also waits
for a grace period (a veth ~16 ms, a bridge ~49 ms): the host end of a veth goes away with the
container's namespace when its init dies, so it is never deleted on the destroy path.

The container end is created under a name of our own and renamed to eth0 only inside, found
by that name: a socket that were somehow in the host's namespace would fail to find it
rather than configure the host's own eth0.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from garden.errors import KernelError
from garden.linux.net import names
from garden.linux.net.rtnl import Rtnl
from garden.linux.plan import NetworkPlan

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetworkError(KernelError):
    pass


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def in_fresh_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a new thread and wait for it: for work that changes per-thread kernel state
    (the network namespace), so that no pooled thread is ever left in the wrong one."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the caller below
            error.append(exc)

    thread = threading.Thread(target=body, name="garden-netns", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def rtnl_in_netns(netns_fd: int) -> Rtnl:
    """An rtnetlink socket in the network namespace of `netns_fd`, usable from any thread: a
    netlink socket belongs to the namespace it was opened in."""

    def open_there() -> Rtnl:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(netns_fd)
            try:
                return Rtnl()
            finally:
                _setns(home)  # a root process can always return to its own namespace
        finally:
            os.close(home)

    return in_fresh_thread(open_there)


def _sysctl(name: str, key: str, value: str) -> None:
    with open(f"/proc/sys/net/ipv4/conf/{name}/{key}", "w") as f:
        f.write(value)


def _host_side_sysctls(name: str) -> None:
    """On the link that carries the host address: forward what arrives from containers,
    accept replies for loopback clients (route_localnet, see nft.py), and drop sources that
    do not route back through it (so a container cannot use another one's address)."""
    _sysctl(name, "forwarding", "1")
    _sysctl(name, "route_localnet", "1")
    _sysctl(name, "rp_filter", "1")


def _delete(rt: Rtnl, name: str) -> bool:
    idx = rt.index(name)
    if idx is None:
        return False
    try:
        rt.delete_link(idx)
    except OSError as exc:
        if exc.errno != errno.ENODEV:
            raise
    return True


def ensure_bridge(tag: str, net: NetworkPlan, mtu: int = 0) -> None:
    """The bridge of a shared subnet, up and carrying the host address; idempotent."""
    name = names.bridge(tag, net)
    try:
        with Rtnl() as rt:
            idx = rt.index(name)
            if idx is None:
                rt.add_link(name, "bridge", mtu)
                idx = rt.index(name)
                if idx is None:
                    raise NetworkError(f"create bridge {name}", "it vanished")
                _host_side_sysctls(name)
                rt.add_address(idx, net.host_ip, names.prefixlen(net))
            rt.set_link(idx, up=True)
    except OSError as exc:
        raise NetworkError(f"create bridge {name}", exc) from exc


def delete_bridge(tag: str, net: NetworkPlan) -> None:
    delete_links([names.bridge(tag, net)])


def connect(tag: str, net: NetworkPlan, pid: int, mtu: int = 0) -> None:
    """Create the container's veth pair with its inside end directly in the network namespace
    of `pid`, wire the host end (host address, or a port of the subnet's bridge), and configure
    the inside: eth0 with the container's address, up, loopback up, default route via the
    host side."""
    host = names.host_veth(tag, net)
    inside = names.link_name(tag, names.CONTAINER_END, net.container_ip)
    plen = names.prefixlen(net)
    try:
        netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetworkError(f"open the network namespace of pid {pid}", exc) from exc
    try:
        with Rtnl() as rt:
            # A link of this name can only be a dead container's whose namespace the kernel
            # has not finished cleaning up, or a crash's leftover: live addresses are unique.
            _delete(rt, host)
            rt.add_veth(host, inside, netns, mtu)
            idx = rt.index(host)
            if idx is None:
                raise NetworkError(f"create veth {host}", "it vanished")
            if names.bridged(net):
                master = rt.index(names.bridge(tag, net))
                if master is None:
                    raise NetworkError(f"attach {host}", "the bridge is missing")
                rt.set_link(idx, master=master, up=True)
            else:
                _host_side_sysctls(host)
                rt.add_address(idx, net.host_ip, plen)
                rt.set_link(idx, up=True)
        with rtnl_in_netns(netns) as ns:
            idx = ns.index(inside)
            if idx is None:
                raise NetworkError(f"configure the inside of pid {pid}", f"no link {inside}")
            ns.set_link(idx, name=names.CONTAINER_IFACE)
            ns.add_address(idx, net.container_ip, plen)
            ns.set_link(idx, up=True)
            lo = ns.index("lo")
            if lo is not None:
                ns.set_link(lo, up=True)
            ns.add_default_route(net.host_ip)
    except OSError as exc:
        raise NetworkError(f"connect pid {pid} as {net.container_ip} ({host})", exc) from exc
    finally:
        os.close(netns)


def disconnect(tag: str, net: NetworkPlan) -> None:
    """Delete the host end of the veth if it is still there (after a failed set-up; normally
    it goes with the container's namespace)."""
    delete_links([names.host_veth(tag, net)])


def ensure_ifb(name: str) -> None:
    try:
        with Rtnl() as rt:
            idx = rt.index(name)
            if idx is None:
                rt.add_link(name, "ifb")
                idx = rt.index(name)
                if idx is None:
                    raise NetworkError(f"create ifb {name}", "it vanished")
            rt.set_link(idx, up=True)
    except OSError as exc:
        raise NetworkError(f"create ifb {name}", exc) from exc


def delete_links(link_names: list[str]) -> list[str]:
    """Delete the named links that exist; return those deleted."""
    deleted = []
    try:
        with Rtnl() as rt:
            for name in link_names:
                if _delete(rt, name):
                    deleted.append(name)
    except OSError as exc:
        raise NetworkError(f"delete links {link_names}", exc) from exc
    return deleted


def list_links(tag: str) -> list[str]:
    """Names of every link in the host's namespace that carries our tag."""
    try:
        with Rtnl() as rt:
            found = rt.links()
    except OSError as exc:
        raise NetworkError("list links", exc) from exc
    return sorted(n for n in found if names.is_ours(tag, n))


def route_mtu() -> int:
    """The MTU of the link that carries the default route (0 when there is none)."""
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000":
                    with open(f"/sys/class/net/{fields[0]}/mtu") as m:
                        return int(m.read().strip())
    except (OSError, ValueError):
        pass
    return 0
