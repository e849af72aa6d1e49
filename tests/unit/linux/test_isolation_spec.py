"""What the spec builder grants an unprivileged container and what it withholds: capabilities,
the seccomp allowlist, masked paths, devices. The integration tests check the same from inside a
real container (tests/integration/test_isolation*.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from garden.linux import oci, seccomp
from tests.unit.linux.test_oci import plan


def allowed_names(profile: dict[str, Any]) -> set[str]:
    """Syscalls an allow rule names without conditions."""
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


def test_unprivileged_caps_are_gardens_fourteen() -> None:
    caps = oci.container_spec(plan(), nofile=(1, 1))["process"]["capabilities"]
    assert caps["bounding"] == oci.UNPRIVILEGED_CAPS
    mask = sum(1 << oci.CAP_NAMES.index(c) for c in oci.UNPRIVILEGED_CAPS)
    assert mask == 0xA80425FB  # CapBnd/CapEff as /proc/self/status shows them inside
    for dangerous in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_MODULE"):
        assert dangerous not in caps["bounding"]


def test_privileged_caps_are_every_cap_the_kernel_knows() -> None:
    assert sorted(oci.PRIVILEGED_CAPS) == sorted(oci.CAP_NAMES)
    assert len(set(oci.PRIVILEGED_CAPS)) == len(oci.PRIVILEGED_CAPS)


def test_unprivileged_gets_seccomp_privileged_does_not() -> None:
    spec = oci.container_spec(plan(), nofile=(1, 1))
    profile = spec["linux"]["seccomp"]
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == seccomp.EPERM
    assert "seccomp" not in oci.container_spec(plan(uid_base=None), nofile=(1, 1))["linux"]
    json.dumps(profile)  # plain data


def test_seccomp_allows_nothing_forbidden() -> None:
    profile = seccomp.profile("x86_64")
    every_allowed = {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW"
        for name in rule["names"]
    }
    assert every_allowed & seccomp.FORBIDDEN == set()
    for name in ("keyctl", "add_key", "request_key", "unshare", "mount", "setns", "bpf"):
        assert name not in every_allowed


def test_seccomp_allows_what_ordinary_programs_need() -> None:
    names = allowed_names(seccomp.profile("x86_64"))
    for name in ("read", "write", "openat", "execve", "wait4", "ioctl", "chroot", "ptrace",
                 "arch_prctl", "rt_sigreturn", "exit_group", "setsid", "futex"):  # fmt: skip
        assert name in names


def test_clone_without_namespace_flags_only() -> None:
    profile = seccomp.profile("x86_64")
    (clone,) = [r for r in profile["syscalls"] if r["names"] == ["clone"]]
    assert clone["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    # CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET and CLONE_NEWPID are all in the mask
    for flag in (0x10000000, 0x00020000, 0x40000000, 0x20000000):
        assert clone["args"][0]["value"] & flag
    (clone3,) = [r for r in profile["syscalls"] if r["names"] == ["clone3"]]
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": seccomp.ENOSYS}
    s390 = seccomp.profile("s390x")
    (clone,) = [r for r in s390["syscalls"] if r["names"] == ["clone"]]
    assert clone["args"][0]["index"] == 1


def test_socket_refuses_vsock_and_personality_is_limited() -> None:
    rules = seccomp.profile("x86_64")["syscalls"]
    (sock,) = [r for r in rules if r["names"] == ["socket"]]
    assert sock["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]
    personas = {r["args"][0]["value"] for r in rules if r["names"] == ["personality"]}
    assert personas == {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}


@pytest.mark.parametrize(
    ("machine", "arches"),
    [
        ("x86_64", ["SCMP_ARCH_X86_64"]),  # no compat ABIs: docs/adr/isolation.md
        ("aarch64", ["SCMP_ARCH_AARCH64"]),
    ],
)
def test_architectures(machine: str, arches: list[str]) -> None:
    assert seccomp.profile(machine)["architectures"] == arches


def test_unknown_architecture_lets_the_runtime_pick_the_native_one() -> None:
    assert "architectures" not in seccomp.profile("mips")


def test_masks_cover_runc_defaults_and_powercap() -> None:
    linux = oci.container_spec(plan(), nofile=(1, 1))["linux"]
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                 "/proc/acpi", "/sys/firmware", "/sys/devices/virtual/powercap"):  # fmt: skip
        assert path in linux["maskedPaths"]
    assert set(linux["readonlyPaths"]) == {
        "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
    }  # fmt: skip


def test_devices_deny_all_but_the_runtime_defaults() -> None:
    linux = oci.container_spec(plan(), nofile=(1, 1))["linux"]
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert "devices" not in linux  # no device nodes of our own


def test_sys_is_read_only() -> None:
    for p in (plan(), plan(netns_path="/run/netns/x"), plan(uid_base=None)):
        mounts = {m["destination"]: m for m in oci.container_spec(p, nofile=(1, 1))["mounts"]}
        assert "ro" in mounts["/sys"]["options"]
