"""Pure pieces of networking: net-out rules normalised and written for nftables, bandwidth
requests, interface names, the table's text, and the name files."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garden.actors.net_rules import bandwidth_after, normalise_rule
from garden.api import BandwidthLimits, NetOutRule
from garden.errors import InvalidRequestError, KernelError
from garden.linux.net import hosts, names, nft
from garden.linux.plan import Bandwidth, FirewallRule, NetworkPlan, PortMap

NET = NetworkPlan(subnet="10.254.0.4/30", container_ip="10.254.0.5", host_ip="10.254.0.6")


def test_rules_are_normalised_and_written() -> None:
    rule = normalise_rule(NetOutRule(network="10.1.0.0/24", port=80, protocol="tcp", log=True))
    assert rule.networks == [("10.1.0.0", "10.1.0.255")]
    assert rule.ports == [(80, 80)]
    assert nft.rule_expr("gdn", "web", rule) == (
        'ip daddr 10.1.0.0-10.1.0.255 tcp dport 80 log prefix "gdn-out web: " accept'
    )
    rule = normalise_rule(NetOutRule(network="1.2.3.4-1.2.3.9", port_range="1000:2000",
                                     port=80, protocol="udp"))  # fmt: skip
    assert nft.rule_expr("gdn", "h", rule) == (
        "ip daddr 1.2.3.4-1.2.3.9 udp dport { 80, 1000-2000 } accept"
    )
    icmp = normalise_rule(NetOutRule(protocol="icmp", icmp_type=8, icmp_code=0))
    assert nft.rule_expr("gdn", "h", icmp) == "meta l4proto icmp icmp type 8 icmp code 0 accept"
    assert nft.rule_expr("gdn", "h", normalise_rule(NetOutRule())) == "accept"
    assert nft.rule_expr("gdn", "h", normalise_rule(NetOutRule(protocol="tcp"))) == (
        "meta l4proto tcp accept"
    )


@pytest.mark.parametrize(
    "rule",
    [
        NetOutRule(port=80),
        NetOutRule(port=80, protocol="icmp"),
        NetOutRule(icmp_type=1, protocol="udp"),
        NetOutRule(icmp_code=1, protocol="icmp"),
        NetOutRule(icmp_type=256, protocol="icmp"),
        NetOutRule(network="10.0.0.1-10.0.0.0"),
        NetOutRule(network="host.example"),
        NetOutRule(port_range="2:1", protocol="tcp"),
        NetOutRule(port_range="a:b", protocol="tcp"),
        NetOutRule(port=65536, protocol="tcp"),
    ],
)
def test_bad_rules(rule: NetOutRule) -> None:
    with pytest.raises(InvalidRequestError):
        normalise_rule(rule)


def test_bandwidth_requests() -> None:
    bw = Bandwidth(rate=1000, burst=4096)
    assert bandwidth_after(BandwidthLimits(), None) is None
    assert bandwidth_after(BandwidthLimits(), bw) == bw
    assert bandwidth_after(BandwidthLimits(rate=2000), bw) == Bandwidth(rate=2000, burst=4096)
    assert bandwidth_after(BandwidthLimits(rate=0), bw) is None
    assert bandwidth_after(BandwidthLimits(rate=10, burst=2000), None) == Bandwidth(
        rate=10, burst=2000
    )
    for bad in (
        BandwidthLimits(rate=1000),  # no burst at all
        BandwidthLimits(rate=1000, burst=1000),  # below a frame
        BandwidthLimits(rate=-1, burst=4096),
        BandwidthLimits(rate=2**41, burst=4096),
    ):
        with pytest.raises(InvalidRequestError):
            bandwidth_after(bad, None)


@given(st.integers(0, 2**32 - 1))
def test_names_round_trip_and_fit(n: int) -> None:
    ip = str(ipaddress.IPv4Address(n))
    encoded = names.encode_ip(ip)
    assert names.decode_ip(encoded) == ip
    name = names.link_name("abcdefgh", names.IFB, ip)
    assert len(name) <= 15
    assert names.is_ours("abcdefgh", name)
    assert not names.is_ours("abcdefg", name)
    assert not names.is_ours("abcdefghi"[:8] + "x", name)


def test_links_of_a_container() -> None:
    shared = NetworkPlan(subnet="10.1.0.0/24", container_ip="10.1.0.7", host_ip="10.1.0.254")
    assert not names.bridged(NET) and names.bridged(shared)
    assert names.gateway_link("g", NET) == names.host_veth("g", NET)
    assert names.gateway_link("g", shared) == names.bridge("g", shared)
    owned = names.owned_links("g", [NET, shared], {"10.1.0.7"})
    assert owned == {
        names.host_veth("g", NET),
        names.host_veth("g", shared),
        names.bridge("g", shared),
        names.ifb("g", shared),
    }


def test_table_text() -> None:
    spec = nft.TableSpec(
        tag="gdn",
        pool="10.254.0.0/22",
        deny=["10.0.0.0/8"],
        containers=[
            nft.ContainerNft(
                handle="web",
                net=NET,
                mapped_ports=[PortMap(host_port=61001, container_port=80)],
                rules=[FirewallRule(protocol="tcp", ports=[(443, 443)])],
            ),
            nft.ContainerNft(
                handle="s",
                net=NetworkPlan(subnet="10.1.0.0/24", container_ip="10.1.0.1", host_ip="x"),
                static_subnet=True,
            ),
        ],
    )
    text = nft.table_script(spec)
    assert text.startswith("add table ip gdn\ndelete table ip gdn\ntable ip gdn {")
    assert "elements = { 10.254.0.0/22, 10.1.0.0/24 }" in text
    assert "elements = { 10.1.0.0/24 . 10.1.0.0/24 }" in text
    assert "elements = { 10.0.0.0/8 }" in text
    assert 'add element ip gdn netin { 61001 comment "web" : 10.254.0.5 . 80 }' in text
    chain = nft.chain_of(NET)
    assert f'add rule ip gdn {chain} tcp dport 443 accept comment "web"' in text
    assert nft.teardown_script("gdn", NET, [], False) == ""
    down = nft.teardown_script("gdn", NET, [PortMap(host_port=61001, container_port=80)], True)
    assert down.count("delete") == 3
    assert nft.is_static(NET, "10.254.0.0/22") is False


def test_resolv_conf_drops_loopback_servers_or_uses_the_given_ones() -> None:
    host = (
        "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\n"
        "nameserver fe80::1%eth0\nsearch example.com\noptions ndots:2\n"
    )
    assert hosts.resolv_conf(host) == (
        "nameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch example.com\noptions ndots:2\n"
    )
    assert hosts.resolv_conf(host, ["8.8.8.8"]) == (
        "nameserver 8.8.8.8\nsearch example.com\noptions ndots:2\n"
    )
    assert hosts.hosts_file("web", "10.0.0.5").splitlines()[-1] == "10.0.0.5 web"


def test_name_files_never_follow_symlinks(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    target = tmp_path / "host-file"
    target.write_text("precious\n")
    (rootfs / "etc" / "hosts").symlink_to(target)
    uid = os.getuid()
    hosts.write_name_files(rootfs, {"hosts": "new\n", "resolv.conf": "r\n"}, uid)
    assert target.read_text() == "precious\n"
    assert (rootfs / "etc" / "hosts").read_text() == "new\n"
    assert not (rootfs / "etc" / "hosts").is_symlink()
    assert oct((rootfs / "etc" / "resolv.conf").stat().st_mode & 0o777) == "0o644"

    # A symlinked /etc is refused rather than followed.
    other = tmp_path / "other"
    (other / "etc-elsewhere").mkdir(parents=True)
    (other / "etc").symlink_to(other / "etc-elsewhere")
    with pytest.raises(KernelError):
        hosts.write_name_files(other, {"hosts": "x\n"}, uid)
    assert not (other / "etc-elsewhere" / "hosts").exists()

    # A missing /etc is made.
    bare = tmp_path / "bare"
    bare.mkdir()
    hosts.write_name_files(bare, {"hosts": "x\n"}, uid)
    assert (bare / "etc" / "hosts").read_text() == "x\n"
