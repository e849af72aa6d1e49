"""The OCI spec builder is pure: check the spec it makes for each kind of plan."""

from __future__ import annotations

from typing import Any

from garden.linux import oci
from garden.linux.plan import ContainerPlan, MountPlan, ResourceLimits


def plan(**kw: Any) -> ContainerPlan:
    base: dict[str, Any] = dict(
        handle="h1",
        container_id="cid1",
        container_path="/state/containers/cid1",
        rootfs="/rootfs",
        hostname="h1-host",
        env=["A=1"],
        bind_mounts=[],
        uid_base=100000,
        cgroup_path="/garden/cid1",
    )
    base.update(kw)
    return ContainerPlan(**base)


def by_dest(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in spec["mounts"]}


def test_unprivileged_has_user_namespace_and_mappings() -> None:
    spec = oci.container_spec(plan(), nofile=(1024, 4096))
    linux = spec["linux"]
    assert {"type": "user"} in linux["namespaces"]
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert linux["gidMappings"] == linux["uidMappings"]
    assert linux["cgroupsPath"] == "/garden/cid1"
    assert sorted(n["type"] for n in linux["namespaces"]) == sorted(
        ["pid", "ipc", "uts", "mount", "network", "user"]
    )
    assert "gid=5" not in by_dest(spec)["/dev/pts"]["options"]
    assert by_dest(spec)["/sys"]["type"] == "sysfs"


def test_privileged_has_no_user_namespace() -> None:
    spec = oci.container_spec(plan(uid_base=None), nofile=(1024, 4096))
    assert all(n["type"] != "user" for n in spec["linux"]["namespaces"])
    assert "uidMappings" not in spec["linux"]
    assert "gid=5" in by_dest(spec)["/dev/pts"]["options"]
    assert "CAP_SYS_ADMIN" in spec["process"]["capabilities"]["bounding"]


def test_process_root_and_hostname() -> None:
    spec = oci.container_spec(plan(), nofile=(1024, 4096))
    assert spec["process"]["args"] == ["/.catatonit", "-P"]
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}
    assert spec["root"] == {"path": "rootfs", "readonly": False}
    assert spec["hostname"] == "h1-host"
    assert spec["process"]["env"][0] == "A=1"
    assert any(e.startswith("PATH=") for e in spec["process"]["env"])
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]


def test_env_path_is_kept() -> None:
    spec = oci.container_spec(plan(env=["PATH=/x"]), nofile=(1, 1))
    assert spec["process"]["env"] == ["PATH=/x"]


def test_catatonit_and_bind_mounts() -> None:
    mounts = [
        MountPlan(source="/host/ro", destination="/ro", read_only=True),
        MountPlan(source="/host/rw", destination="/rw", read_only=False),
    ]
    spec = oci.container_spec(plan(bind_mounts=mounts), init_path="/x/catatonit", nofile=(1, 1))
    d = by_dest(spec)
    assert d["/.catatonit"]["source"] == "/x/catatonit"
    assert "ro" in d["/.catatonit"]["options"]
    assert d["/ro"] == {"destination": "/ro", "type": "bind", "source": "/host/ro",
                        "options": ["bind", "ro"]}  # fmt: skip
    assert d["/rw"]["options"] == ["bind", "rw"]
    # bind mounts come after the system mounts, in plan order
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests.index("/ro") > dests.index("/.catatonit") and dests[-1] == "/rw"


def test_netns_path_joins_and_userns_binds_sys() -> None:
    spec = oci.container_spec(plan(netns_path="/run/netns/n1"), nofile=(1, 1))
    assert {"type": "network", "path": "/run/netns/n1"} in spec["linux"]["namespaces"]
    sys_mount = by_dest(spec)["/sys"]
    assert sys_mount["type"] == "bind" and "rbind" in sys_mount["options"]
    assert "ro" in sys_mount["options"]
    # privileged + netns_path: sysfs works
    spec = oci.container_spec(plan(netns_path="/run/netns/n1", uid_base=None), nofile=(1, 1))
    assert by_dest(spec)["/sys"]["type"] == "sysfs"


def test_unprivileged_caps_and_allowed_filter() -> None:
    spec = oci.container_spec(plan(), nofile=(1, 1))
    caps = spec["process"]["capabilities"]
    assert set(caps["bounding"]) == set(oci.UNPRIVILEGED_CAPS)
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    allowed = frozenset(oci.PRIVILEGED_CAPS) - {"CAP_SYS_RESOURCE"}
    spec = oci.container_spec(plan(uid_base=None), nofile=(1, 1), allowed_caps=allowed)
    assert "CAP_SYS_RESOURCE" not in spec["process"]["capabilities"]["bounding"]


def test_caps_from_mask() -> None:
    assert oci.caps_from_mask(0b1) == {"CAP_CHOWN"}
    assert oci.caps_from_mask(1 << 21 | 1 << 40 | 1 << 63) == {
        "CAP_SYS_ADMIN",
        "CAP_CHECKPOINT_RESTORE",
    }


def test_masked_and_readonly_paths() -> None:
    spec = oci.container_spec(plan(), nofile=(1, 1))
    assert "/proc/kcore" in spec["linux"]["maskedPaths"]
    assert "/proc/sys" in spec["linux"]["readonlyPaths"]


def test_nofile_limit_never_above_our_hard_limit() -> None:
    assert oci.nofile_limit((1024, 20000)) == (20000, 20000)
    assert oci.nofile_limit((1024, 1 << 30)) == (1 << 20, 1 << 20)
    soft, hard = oci.nofile_limit()
    assert soft == hard > 0


def test_resources_from_the_plan() -> None:
    limited = plan(resources=ResourceLimits(memory_bytes=1 << 26, cpu_shares=512, pids_max=9))
    res = oci.container_spec(limited, swap_accounting=True)["linux"]["resources"]
    assert res["memory"] == {"limit": 1 << 26, "swap": 1 << 26}
    assert res["cpu"] == {"shares": 512}
    assert res["pids"] == {"limit": 9}
    assert res["devices"] == [{"allow": False, "access": "rwm"}]
    res = oci.container_spec(limited, swap_accounting=False)["linux"]["resources"]
    assert res["memory"] == {"limit": 1 << 26}
    assert set(oci.container_spec(plan())["linux"]["resources"]) == {"devices"}
