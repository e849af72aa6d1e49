"""Real containers through the API, checked from outside: the overlay, the cgroup, the
namespaces, hostname, bind mounts, and that destroy and failed creates leave nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio

from garden.linux.cgroups import detect
from garden.linux.rootfs import mounts_under
from tests.integration.conftest import Server, in_runtime, leftovers

pytestmark = pytest.mark.root


def runc(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """The server's runtime (runc or crun) on its state, e.g. `runc(server, "exec", cid, "ls")`."""
    return in_runtime(server.config.state_dir, *args, timeout=30)


def container_id(info: dict[str, object]) -> str:
    return Path(str(info["container_path"])).name


async def test_create_is_real_and_destroy_leaves_nothing(server: Server, tmp_path: Path) -> None:
    c = server.client
    rw = tmp_path / "rw"
    ro = tmp_path / "ro"
    for d in (rw, ro):
        d.mkdir()
        d.chmod(0o777)
    (ro / "hello").write_text("from host")
    r = await c.post(
        "/containers",
        json={
            "handle": "integration-one",
            "env": ["FOO=bar"],
            "privileged": True,
            "bind_mounts": [
                {"src_path": str(rw), "dst_path": "/mnt/rw", "mode": "RW"},
                {"src_path": str(ro), "dst_path": "/mnt/ro"},
            ],
        },
    )
    assert r.status_code == 200, r.text
    info = (await c.get("/containers/integration-one/info")).json()
    cid = container_id(info)
    path = Path(info["container_path"])
    assert path.is_dir()
    assert path / "rootfs" in mounts_under(path)
    cg = detect()
    cgroup = f"{server.config.cgroup_parent}/{cid}"
    assert cg.exists(cgroup)
    pids = cg.pids(cgroup)
    assert len(pids) == 1
    # The init is the reaping catatonit, in its own namespaces.
    # `runc run -d` may answer before its init has exec'd catatonit: wait (bounded) for it.
    cmdline = Path(f"/proc/{pids[0]}/cmdline")
    with trio.fail_after(10):
        while not cmdline.read_bytes().startswith(b"/.catatonit"):
            await trio.sleep(0.01)
    for ns in ("mnt", "pid", "uts", "ipc", "net"):
        assert os.readlink(f"/proc/{pids[0]}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    assert runc(server, "exec", cid, "hostname").stdout.strip() == "integration-one"
    assert runc(server, "exec", cid, "sh", "-c", "echo $FOO").stdout.strip() == "bar"
    write_rw = runc(server, "exec", cid, "sh", "-c", "echo in > /mnt/rw/f")
    assert write_rw.returncode == 0, write_rw.stderr
    assert (rw / "f").read_text() == "in\n"
    write_ro = runc(server, "exec", cid, "sh", "-c", "echo in > /mnt/ro/f")
    assert write_ro.returncode != 0
    assert not (ro / "f").exists()
    assert runc(server, "exec", cid, "cat", "/mnt/ro/hello").stdout == "from host"
    # Loopback and the container end of its veth (tests/integration/net/ has the rest).
    links = runc(server, "exec", cid, "ls", "/sys/class/net").stdout.split()
    assert links == ["eth0", "lo"]

    r = await c.delete("/containers/integration-one")
    assert r.status_code == 200, r.text
    assert not path.exists()
    assert not cg.exists(cgroup)
    assert leftovers(server.config) == []
    assert (await c.delete("/containers/integration-one")).status_code == 404


async def test_unprivileged_container_maps_root(server: Server) -> None:
    c = server.client
    r = await c.post("/containers", json={"handle": "unpriv"})
    assert r.status_code == 200, r.text
    info = (await c.get("/containers/unpriv/info")).json()
    cid = container_id(info)
    pid = detect().pids(f"{server.config.cgroup_parent}/{cid}")[0]
    uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
    assert uid_map == ["0", str(server.config.uid_base), "65536"]
    assert os.stat(f"/proc/{pid}").st_uid == server.config.uid_base
    out = runc(server, "exec", cid, "sh", "-c", "id -u; touch /etc/written && echo ok")
    assert out.stdout.split() == ["0", "ok"], out.stderr
    upper = Path(info["container_path"], "upper", "etc", "written")
    assert upper.stat().st_uid == server.config.uid_base


async def test_long_handle_hostname_is_last_63_characters(server: Server) -> None:
    handle = "h" * 70 + "-tail"
    r = await server.client.post("/containers", json={"handle": handle, "privileged": True})
    assert r.status_code == 200, r.text
    cid = container_id((await server.client.get(f"/containers/{handle}/info")).json())
    assert runc(server, "exec", cid, "hostname").stdout.strip() == handle[-63:]


async def test_failed_create_leaves_nothing(server: Server, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    # A file bind-mounted over a directory of the rootfs: found only once the rootfs is
    # mounted, late in the create (the runtime used to fail on it with a 500).
    r = await server.client.post(
        "/containers",
        json={"handle": "broken", "bind_mounts": [{"src_path": str(afile), "dst_path": "/etc"}]},
    )
    assert r.status_code == 400, r.text
    assert "over the directory" in r.json()["message"]
    assert "broken" not in (await server.client.get("/containers")).json()["handles"]
    assert leftovers(server.config) == []
    r = await server.client.post("/containers", json={"handle": "broken"})
    assert r.status_code == 200, r.text


async def test_missing_bind_mount_source_is_400_and_nothing_made(server: Server) -> None:
    r = await server.client.post(
        "/containers",
        json={"handle": "nosrc", "bind_mounts": [{"src_path": "/no/such/dir", "dst_path": "/x"}]},
    )
    assert r.status_code == 400
    assert r.json()["type"] == "InvalidRequestError"
    assert leftovers(server.config) == []


async def test_stop_keeps_files_and_reports_stopped(server: Server) -> None:
    c = server.client
    assert (
        await c.post("/containers", json={"handle": "s", "privileged": True})
    ).status_code == 200
    r = await c.put("/containers/s/stop", json={"kill": True})
    assert r.status_code == 200, r.text
    assert (await c.get("/containers/s/info")).json()["state"] == "stopped"


async def test_container_origin_bind_mount(server: Server) -> None:
    r = await server.client.post(
        "/containers",
        json={
            "handle": "origin",
            "privileged": True,
            "bind_mounts": [{"src_path": "/etc", "dst_path": "/etc-copy", "origin": "Container"}],
        },
    )
    assert r.status_code == 200, r.text
    cid = container_id((await server.client.get("/containers/origin/info")).json())
    out = runc(server, "exec", cid, "cat", "/etc-copy/passwd")
    assert "vcap" in out.stdout, out.stderr


async def test_container_origin_source_symlink_cannot_reach_the_host(
    server: Server, tmp_path: Path
) -> None:
    """A symlink in the image pointing at a host path resolves inside the rootfs, as it would
    for a process in the container: the host file is never mounted."""
    import shutil

    (tmp_path / "host-only").write_text("secret")
    rootfs = tmp_path / "rootfs"
    shutil.copytree(server.config.default_rootfs, rootfs, symlinks=True)
    (rootfs / "escape").symlink_to(tmp_path)
    r = await server.client.post(
        "/containers",
        json={
            "handle": "escape",
            "privileged": True,
            "rootfs": str(rootfs),
            "bind_mounts": [
                {"src_path": "/escape/host-only", "dst_path": "/x", "origin": "Container"}
            ],
        },
    )
    assert r.status_code == 400, r.text
    assert "does not exist in the rootfs" in r.json()["message"]
    assert leftovers(server.config) == []


async def test_unix_socket_listener(state_dir: Path, nursery: object) -> None:
    import stat

    import httpx
    import trio

    from garden.main import serve
    from tests.integration.conftest import force_cleanup, make_config, needs_root

    needs_root()
    sock = state_dir.parent / "garden.sock"
    config = make_config(state_dir, bind_socket=str(sock))
    assert isinstance(nursery, trio.Nursery)
    try:
        await nursery.start(serve, config)
        mode = stat.S_IMODE(sock.stat().st_mode)
        assert mode == 0o660
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport, base_url="http://garden") as c:
            r = await c.get("/ping")
            assert r.status_code == 200
            assert r.json() == {}
        nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await force_cleanup(config)  # the server's nftables table and cgroup parent
