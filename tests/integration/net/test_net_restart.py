"""Networking across a crash: the kernel keeps forwarding while the server is down (SIGKILL);
after a restart every address, mapping, rule and limit is back from the log, nothing is handed
out twice, and what a crash left without an owner is swept. A create whose network set-up fails
leaves nothing behind."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from garden.config import DEFAULT_ROOTFS
from garden.linux.net import names
from tests.integration.conftest import (
    TEST_ROOT,
    Server,
    ServerProcess,
    leftovers,
    nft_leftovers,
    our_links,
)
from tests.integration.net.helpers import (
    PeerNamespace,
    connect,
    in_netns,
    init_pid,
    listening,
    peer_namespace,
)
from tests.integration.net.test_addresses import static_subnet
from tests.integration.test_restart import _renumber

pytestmark = pytest.mark.root


@pytest.fixture
def peer() -> Iterator[PeerNamespace]:
    with peer_namespace() as ns:
        yield ns


def create(c: httpx.Client, handle: str, **spec: object) -> dict[str, object]:
    r = c.post("/containers", json={"handle": handle, **spec})
    assert r.status_code == 200, r.text
    info = c.get(f"/containers/{handle}/info").json()
    assert isinstance(info, dict)
    return info


def has_tbf(tag: str, ip: str) -> bool:
    dev = names.link_name(tag, names.HOST_VETH, ip)
    out = subprocess.run(["tc", "qdisc", "show", "dev", dev], capture_output=True, text=True)
    return "tbf" in out.stdout


def test_state_survives_a_crash(server_process: ServerProcess, peer: PeerNamespace) -> None:
    sp = server_process
    sp.extra_args = ["--deny-network", peer.subnet]
    sp.start()
    shared = static_subnet()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        web = create(c, "web")
        hp = c.post("/containers/web/net/in", json={"container_port": 8080}).json()["host_port"]
        walled = create(c, "walled")
        r = c.post(
            "/containers/walled/net/out",
            json={"network": peer.subnet, "port": 9001, "protocol": "tcp"},
        )
        assert r.status_code == 200, r.text
        slow = create(c, "slow", limits={"bandwidth": {"rate": 1 << 20, "burst": 65536}})
        s1 = create(c, "s1", network=str(shared))
        s2 = create(c, "s2", network=str(shared))
        before = {
            h: c.get(f"/containers/{h}/info").json() for h in ("web", "walled", "slow", "s1", "s2")
        }
    sp.kill()

    web_where = in_netns(init_pid(web))
    with listening(web_where, "0.0.0.0", 8080, arg="web"), \
         listening(peer.where, "0.0.0.0", 9001, arg="peer"), \
         listening(in_netns(init_pid(s2)), "0.0.0.0", 9002, arg="s2"):  # fmt: skip
        # The kernel keeps it all while the server is down.
        assert connect([], "127.0.0.1", hp).ok
        assert connect(in_netns(init_pid(walled)), peer.ns_ip, 9001).ok
        assert not connect(in_netns(init_pid(web)), peer.ns_ip, 9001, timeout=2).ok
        sp.start()
        with httpx.Client(base_url=sp.url, timeout=30) as c:
            for handle, info in before.items():
                now = c.get(f"/containers/{handle}/info").json()
                for key in ("container_ip", "host_ip", "mapped_ports"):
                    assert now[key] == info[key], (handle, key)
            assert c.get("/containers/slow/limits/bandwidth").json()["rate"] == 1 << 20
            # Rebuilt from the log: mapping, hole, limit, shared subnet.
            assert connect([], "127.0.0.1", hp).ok
            assert connect(in_netns(init_pid(walled)), peer.ns_ip, 9001).ok
            assert not connect(in_netns(init_pid(web)), peer.ns_ip, 9001, timeout=2).ok
            assert has_tbf(sp.tag, str(slow["container_ip"]))
            assert connect(in_netns(init_pid(s1)), str(s2["container_ip"]), 9002).ok
            # Nothing is handed out twice.
            taken = {str(i["container_ip"]) for i in before.values()}
            fresh = create(c, "fresh")
            assert fresh["container_ip"] not in taken
            r = c.post("/containers/fresh/net/in", json={"host_port": hp})
            assert r.status_code == 409, r.text
            other = c.post("/containers/fresh/net/in", json={}).json()["host_port"]
            assert other != hp
            again = create(c, "s3", network=str(shared))
            assert again["container_ip"] not in taken
            for handle in (*before, "fresh", "s3"):
                assert c.delete(f"/containers/{handle}").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def test_what_a_crash_left_without_owner_is_swept(server_process: ServerProcess) -> None:
    sp = server_process
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        create(c, "ghost", network=str(static_subnet()),
               limits={"bandwidth": {"rate": 1 << 20, "burst": 65536}})  # fmt: skip
        assert c.post("/containers/ghost/net/in", json={}).status_code == 200
        assert (
            c.post("/containers/ghost/net/out", json={"network": "10.0.0.0/8"}).status_code == 200
        )
        create(c, "kept")
    sp.kill()
    assert len(our_links(sp.tag)) == 4  # two veths, the ghost's bridge and ifb
    assert nft_leftovers(sp.tag, sp.pool)
    # Forget the ghost, as if its records never reached the disk.
    log = sp.state_dir / "events.log"
    kept = [line for line in log.read_bytes().splitlines(keepends=True) if b'"ghost"' not in line]
    log.write_bytes(b"".join(_renumber(kept)))
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=30) as c:
        assert c.get("/containers").json() == {"handles": ["kept"]}
        kept_info = c.get("/containers/kept/info").json()
        veth = names.link_name(sp.tag, names.HOST_VETH, kept_info["container_ip"])
        assert our_links(sp.tag) == [veth]
        assert nft_leftovers(sp.tag, sp.pool) == []
        assert c.delete("/containers/kept").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


@pytest.fixture
def broken_rootfs() -> Iterator[Path]:
    """A rootfs whose /etc is a file: the name files cannot be written, so the network
    set-up fails after the container started."""
    root = TEST_ROOT / f"broken-rootfs-{Path(DEFAULT_ROOTFS).name}"
    TEST_ROOT.mkdir(mode=0o711, exist_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(DEFAULT_ROOTFS, root, symlinks=True)
    shutil.rmtree(root / "etc")
    (root / "etc").write_text("not a directory\n")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_failed_network_setup_leaves_nothing(server: Server, broken_rootfs: Path) -> None:
    c = server.client
    full = (await c.get("/capacity")).json()["max_containers"]
    r = await c.post(
        "/containers",
        json={"handle": "broken", "rootfs": str(broken_rootfs), "privileged": True},
    )
    assert r.status_code == 500, r.text
    assert "etc" in r.json()["message"]
    assert (await c.get("/containers")).json() == {"handles": []}
    assert await trio.to_thread.run_sync(leftovers, server.config) == []
    # Its address went back to the pool.
    assert (await c.get("/capacity")).json()["max_containers"] == full
