"""`LinuxNetworker`: the real `Networker` (actors/ports.py). It wires a started container to the
host (veth pair, bridge of a shared subnet, addresses, routes, name files), maps host ports
into it, opens holes in the denied networks for it, shapes its bandwidth, and releases all of
that on destroy; at start-up it rebuilds its nftables table from the log's facts and removes
links that no container owns.

What a plain container costs: a veth pair created with its inside end already in the
container's namespace, two addresses, a route, two small files; no nftables change at all
(per-container state lives in sets and maps, see nft.py) and nothing to delete on destroy: the
veth goes with the container's namespace. Mappings, rules, bandwidth limits and shared subnets
each add their own work, and the deletions they need on destroy.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import final

import trio

from garden import faults
from garden.errors import GardenError
from garden.linux.kfiles import read_bytes
from garden.linux.net import hosts, names, netlink, nft, tc
from garden.linux.plan import (
    Bandwidth,
    ContainerPlan,
    FirewallRule,
    LiveNetwork,
    NetWiring,
    NetworkPlan,
    PortMap,
    Started,
)

log = logging.getLogger("garden.net")

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


@final
class LinuxNetworker:
    def __init__(
        self,
        *,
        tag: str,
        pool: str,
        deny_networks: Sequence[str] = (),
        dns_servers: Sequence[str] = (),
        host_resolv_conf: str = hosts.HOST_RESOLV_CONF,
        ip_forward: bool = False,
        mtu: int = 0,
    ) -> None:
        self.tag = tag
        self.pool = pool
        self.deny_networks = [str(ipaddress.IPv4Network(n, strict=False)) for n in deny_networks]
        self.dns_servers = list(dns_servers)
        self.host_resolv_conf = host_resolv_conf
        self.ip_forward = ip_forward
        # 0: the MTU of the host's default route, so containers never send what it must split.
        self.mtu = mtu or netlink.route_mtu()
        self.nft = nft.Nft()
        # Containers on each shared (bridged) or static subnet, so that the bridge and the
        # subnet's element in nftables go when the last one leaves; one lock per subnet keeps
        # a set-up from racing the teardown of the bridge it needs.
        self._subnet_users: dict[str, set[str]] = {}
        self._subnet_locks: dict[str, trio.Lock] = {}

    # -- start-up ---------------------------------------------------------------------------

    async def restore(self, live: Sequence[LiveNetwork]) -> list[str]:
        """Replace our nftables table with one built from `live` (every mapping and rule the
        log records; whatever a crash left is gone with the old table), and delete every link
        of our tag that no live container owns. Return the names of the links deleted."""
        if self.ip_forward:
            await trio.to_thread.run_sync(_enable_ip_forward)
        with_net = [c for c in live if c.plan.network is not None]
        spec = nft.TableSpec(
            tag=self.tag,
            pool=self.pool,
            deny=self.deny_networks,
            containers=[
                nft.ContainerNft(
                    handle=c.plan.handle,
                    net=_net(c.plan),
                    mapped_ports=c.wiring.mapped_ports,
                    rules=c.wiring.rules,
                    static_subnet=self._static(_net(c.plan)),
                )
                for c in with_net
            ],
        )
        await trio.to_thread.run_sync(self.nft.run, nft.table_script(spec), "restore nft table")
        self._subnet_users.clear()
        for c in with_net:
            net = _net(c.plan)
            if self._shared(net):
                self._subnet_users.setdefault(net.subnet, set()).add(net.container_ip)
        nets = [_net(c.plan) for c in with_net]
        limited = {_net(c.plan).container_ip for c in with_net if c.wiring.bandwidth}
        owned = names.owned_links(self.tag, nets, limited)
        found = await trio.to_thread.run_sync(netlink.list_links, self.tag)
        stray = [n for n in found if n not in owned]
        by_veth = {names.host_veth(self.tag, n) for n in nets}
        for name in stray:
            veth = f"{self.tag}{names.HOST_VETH}{name[len(self.tag) + 1 :]}"
            if name[len(self.tag)] == names.IFB and veth in by_veth:
                # A limit whose recording a crash prevented: the log says unlimited.
                await tc.clear_limit(veth)
        deleted = await trio.to_thread.run_sync(netlink.delete_links, stray)
        for name in deleted:
            log.warning("sweep-link name=%s", name)
        buckets: list[tuple[str, str, Bandwidth]] = []
        for c in with_net:
            net, bw = _net(c.plan), c.wiring.bandwidth
            veth, ifb = names.host_veth(self.tag, net), names.ifb(self.tag, net)
            if bw is not None and veth in found and ifb not in found:
                await self._apply_limit(net, bw, fresh=True)
            elif bw is not None and veth in found:
                buckets.append((veth, ifb, bw))
        # A change of one limit to another whose recording a crash prevented: the buckets
        # get the logged rate again (one tc run for every limited container).
        await tc.set_buckets(buckets)
        return deleted

    async def remove_all(self) -> None:
        """Delete our table and every link of our tag (tests, and `garden` clean-up tools)."""
        await trio.to_thread.run_sync(self.nft.run, nft.delete_table_script(self.tag))
        found = await trio.to_thread.run_sync(netlink.list_links, self.tag)
        await trio.to_thread.run_sync(netlink.delete_links, found)

    # -- one container ----------------------------------------------------------------------

    async def setup(self, plan: ContainerPlan, started: Started, wiring: NetWiring) -> None:
        net = plan.network
        if net is None:
            return
        async with contextlib.AsyncExitStack() as undo:
            if self._shared(net):
                await self._join_subnet(net)
                undo.push_async_callback(self._leave_subnet, net)
            undo.push_async_callback(_quietly, "disconnect", self._disconnect, net)
            await trio.to_thread.run_sync(netlink.connect, self.tag, net, started.pid, self.mtu)
            faults.reached("net:after-connect")
            await trio.to_thread.run_sync(self._write_name_files, plan)
            if wiring.bandwidth is not None:
                undo.push_async_callback(_quietly, "clear limit", self._clear_limit, net)
                await self._apply_limit(net, wiring.bandwidth, fresh=True)
            for mapping in wiring.mapped_ports:
                await self.map_port(plan, mapping)
            for rule in wiring.rules:
                await self.allow_out(plan, rule)
            undo.pop_all()

    async def teardown(self, plan: ContainerPlan, wiring: NetWiring) -> None:
        """Release what the container holds beyond its veth (which goes with its namespace):
        its elements and chain in nftables, its ifb, and its share of a bridge or static
        subnet. Idempotent."""
        net = plan.network
        if net is None:
            return
        script = nft.teardown_script(self.tag, net, wiring.mapped_ports, bool(wiring.rules))
        if script:
            await trio.to_thread.run_sync(self.nft.run, script, f"tear down {plan.handle}")
        if wiring.bandwidth is not None:
            await self._clear_limit(net)
        if self._shared(net):
            await self._leave_subnet(net)

    async def map_port(self, plan: ContainerPlan, mapping: PortMap) -> None:
        net = _net(plan)
        line = nft.net_in_line(self.tag, plan.handle, net, mapping)
        await trio.to_thread.run_sync(self.nft.run, line, f"map host port {mapping.host_port}")

    async def unmap_port(self, plan: ContainerPlan, mapping: PortMap) -> None:
        script = nft.teardown_script(self.tag, _net(plan), [mapping], False)
        await trio.to_thread.run_sync(self.nft.run, script, f"unmap {mapping.host_port}")

    async def allow_out(self, plan: ContainerPlan, rule: FirewallRule) -> None:
        script = "\n".join(nft.net_out_lines(self.tag, plan.handle, _net(plan), rule))
        await trio.to_thread.run_sync(self.nft.run, script, "add a net-out rule")

    async def limit_bandwidth(
        self, plan: ContainerPlan, current: Bandwidth | None, new: Bandwidth | None
    ) -> None:
        net = _net(plan)
        if new is None:
            await self._clear_limit(net)
            return
        await self._apply_limit(net, new, fresh=current is None)

    def stats(self, plan: ContainerPlan, wiring: NetWiring) -> dict[str, int]:
        """The limit in force in each direction and the bytes and packets the container
        received and sent so far (the host end's counters, mirrored). Reads sysfs: quick."""
        net = plan.network
        if net is None:
            return {}
        bw = wiring.bandwidth
        out = {
            "in_rate": bw.rate if bw else 0,
            "in_burst": bw.burst if bw else 0,
            "out_rate": bw.rate if bw else 0,
            "out_burst": bw.burst if bw else 0,
        }
        base = f"/sys/class/net/{names.host_veth(self.tag, net)}/statistics"
        for ours, theirs in (
            ("rx_bytes", "tx_bytes"),
            ("tx_bytes", "rx_bytes"),
            ("rx_packets", "tx_packets"),
            ("tx_packets", "rx_packets"),
        ):
            try:
                out[ours] = int(read_bytes(f"{base}/{theirs}"))
            except (OSError, ValueError):
                pass
        return out

    # -- steps ------------------------------------------------------------------------------

    def _static(self, net: NetworkPlan) -> bool:
        return nft.is_static(net, self.pool)

    def _shared(self, net: NetworkPlan) -> bool:
        """Does the subnet have state of its own (a bridge, an nftables element)?"""
        return names.bridged(net) or self._static(net)

    def _lock(self, subnet: str) -> trio.Lock:
        return self._subnet_locks.setdefault(subnet, trio.Lock())

    async def _join_subnet(self, net: NetworkPlan) -> None:
        async with self._lock(net.subnet):
            users = self._subnet_users.setdefault(net.subnet, set())
            if not users:
                if names.bridged(net):
                    await trio.to_thread.run_sync(netlink.ensure_bridge, self.tag, net, self.mtu)
                if self._static(net):
                    script = "\n".join(nft.static_subnet_lines(self.tag, net))
                    await trio.to_thread.run_sync(self.nft.run, script, "add subnet")
            users.add(net.container_ip)

    async def _leave_subnet(self, net: NetworkPlan) -> None:
        async with self._lock(net.subnet):
            users = self._subnet_users.get(net.subnet, set())
            users.discard(net.container_ip)
            if users:
                return
            self._subnet_users.pop(net.subnet, None)
            if self._static(net):
                for line in nft.static_subnet_lines(self.tag, net, "delete"):
                    with contextlib.suppress(nft.NftError):  # already gone
                        await trio.to_thread.run_sync(self.nft.run, line, "delete subnet")
            if names.bridged(net):
                await trio.to_thread.run_sync(netlink.delete_bridge, self.tag, net)

    async def _disconnect(self, net: NetworkPlan) -> None:
        await trio.to_thread.run_sync(netlink.disconnect, self.tag, net)

    async def _apply_limit(self, net: NetworkPlan, bw: Bandwidth, *, fresh: bool) -> None:
        veth, ifb = names.host_veth(self.tag, net), names.ifb(self.tag, net)
        if fresh:
            await trio.to_thread.run_sync(netlink.ensure_ifb, ifb)
        try:
            await tc.apply_limit(veth, ifb, bw, fresh=fresh)
        except BaseException:
            if fresh:
                with trio.CancelScope(shield=True):
                    await _quietly("clear limit", self._clear_limit, net)
            raise

    async def _clear_limit(self, net: NetworkPlan) -> None:
        veth, ifb = names.host_veth(self.tag, net), names.ifb(self.tag, net)
        await tc.clear_limit(veth)
        await trio.to_thread.run_sync(netlink.delete_links, [ifb])

    def _write_name_files(self, plan: ContainerPlan) -> None:
        net = _net(plan)
        files = {
            "hosts": hosts.hosts_file(plan.hostname, net.container_ip),
            "resolv.conf": hosts.resolv_conf(
                hosts.read_host_resolv(self.host_resolv_conf), self.dns_servers
            ),
        }
        uid = plan.uid_base if plan.uid_base is not None else 0
        hosts.write_name_files(Path(plan.container_path) / "rootfs", files, uid)


def _net(plan: ContainerPlan) -> NetworkPlan:
    if plan.network is None:
        raise AssertionError(f"container {plan.handle} has no network")
    return plan.network


def _enable_ip_forward() -> None:
    with open(IP_FORWARD, "r+") as f:
        if f.read().strip() != "1":
            log.warning("enabling net.ipv4.ip_forward so containers can reach other hosts")
            f.seek(0)
            f.write("1")


async def _quietly(what: str, fn: Callable[..., Awaitable[None]], *args: object) -> None:
    """An undo step: shielded, bounded, and its failure logged, so the original error wins."""
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + 10
        try:
            await fn(*args)
        except (GardenError, OSError) as exc:
            log.warning("net-undo-failed step=%s error=%s", what, exc)
