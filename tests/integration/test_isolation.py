"""What an unprivileged container (the default) can see and do, checked from inside a real
container through the API: capabilities, seccomp, masked and read-only paths, the uid map,
devices, and that no host process, mount, network device or hostname shows through.
docs/security.md describes what these tests hold the server to."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from garden.linux import oci
from garden.linux.runtime import crun_refuses_host
from tests.integration.conftest import Server
from tests.integration.isolation.helpers import (
    create,
    install_probe,
    probe,
    probe_results,
    run,
    sh,
    status_fields,
)

pytestmark = pytest.mark.root
__all__ = ["probe"]  # a fixture


@pytest.fixture(params=["runc", "crun"])
def server_overrides(request: pytest.FixtureRequest) -> dict[str, object]:
    """Every check against both runtimes: each builds the filter and the masks itself."""
    if request.param == "crun" and (why := crun_refuses_host()) is not None:
        pytest.skip(f"crun cannot run on this host: {why}")
    return {"runtime": request.param}


GARDEN_CAPS = "00000000a80425fb"  # the 14 of oci.UNPRIVILEGED_CAPS
NO_CAPS = "0000000000000000"


async def test_capabilities_no_new_privs_and_seccomp(server: Server) -> None:
    await create(server, "caps")
    root = status_fields((await run(server, "caps", "cat", "/proc/self/status")).text)
    assert oci.caps_from_mask(int(GARDEN_CAPS, 16)) == set(oci.UNPRIVILEGED_CAPS)
    assert (root["CapEff"], root["CapPrm"], root["CapBnd"]) == (GARDEN_CAPS,) * 3
    assert (root["CapInh"], root["CapAmb"]) == (NO_CAPS, NO_CAPS)
    assert root["NoNewPrivs"] == "1"
    assert root["Seccomp"] == "2"  # a filter is installed
    vcap = status_fields((await run(server, "caps", "cat", "/proc/self/status", user="vcap")).text)
    assert (vcap["CapEff"], vcap["CapPrm"], vcap["CapBnd"]) == (NO_CAPS, NO_CAPS, GARDEN_CAPS)
    assert vcap["Seccomp"] == "2"
    # `privileged` on a process only makes root its default user: no capability beyond the
    # container's (it used to get CAP_SYS_ADMIN inside the user namespace).
    priv = await run(server, "caps", "cat", "/proc/self/status", privileged=True, user=None)
    fields = status_fields(priv.text)
    assert fields["Uid"].split()[0] == "0"
    assert (fields["CapEff"], fields["CapBnd"], fields["Seccomp"]) == (
        GARDEN_CAPS,
        GARDEN_CAPS,
        "2",
    )


async def test_uid_map_and_host_owner(server: Server) -> None:
    info = await create(server, "uids")
    base = server.config.uid_base
    for name in ("uid_map", "gid_map"):
        ran = await run(server, "uids", "cat", f"/proc/self/{name}")
        assert ran.text.split() == ["0", str(base), "65536"]
    assert (await run(server, "uids", "id", "-u")).text == "0\n"
    script = "touch /tmp/root-made /tmp/vcap-made && chown 1000:1000 /tmp/vcap-made"
    assert (await sh(server, "uids", script)).exit_status == 0
    upper = Path(info["container_path"]) / "upper" / "tmp"
    assert os.stat(upper / "root-made").st_uid == base
    assert os.stat(upper / "vcap-made").st_uid == base + 1000
    # ids outside the map cannot be used
    ran = await sh(server, "uids", "chown 70000 /tmp/root-made")
    assert ran.exit_status != 0


async def test_refused_syscalls(server: Server, probe: Path) -> None:
    await create(server, "sys")
    await install_probe(server, "sys", probe)
    got = await probe_results(server, "sys")
    refused = [
        "keyctl", "add_key", "request_key", "unshare_user", "unshare_mount", "setns",
        "clone_newuser", "clone_newnet", "mount", "umount", "bpf", "perf_event_open",
        "kexec_load", "userfaultfd", "io_uring_setup", "open_by_handle_at", "vsock", "personality",
    ]  # fmt: skip
    for name in refused:
        assert got[name] == "-1 EPERM", (name, got[name])
    assert got["clone3"] == "-1 ENOSYS"  # so that libcs fall back to clone, which is filtered
    assert got["clone_plain"] == "0 OK"
    assert got["getpid"] == "0 OK"
    assert got["ptrace"] == "-1 ESRCH"  # allowed, as in Docker's default (kernel >= 4.8)
    if "compat" in got:  # x86_64: a 32-bit syscall is killed (SIGSYS) by the filter
        assert got["compat"] == "31 SIGNALED"
    # The same for a user without capabilities.
    vcap = await probe_results(server, "sys", "keyctl", "unshare_user", user="vcap")
    assert vcap == {"keyctl": "-1 EPERM", "unshare_user": "-1 EPERM"}


async def test_busybox_unshare_and_mount_are_refused(server: Server) -> None:
    await create(server, "bb")
    for script in ("unshare -U true", "unshare -m true", "unshare -n true",
                   "mount -t tmpfs none /mnt", "mount -o remount,rw /proc/sys",
                   "umount /proc/keys", "mount --bind /tmp /mnt"):  # fmt: skip
        ran = await sh(server, "bb", script)
        assert ran.exit_status != 0, script
    # ... while ordinary programs work
    ran = await sh(
        server,
        "bb",
        "echo hi > /tmp/f && cat /tmp/f && ls / >/dev/null && chroot / true && "
        "(sleep 0.01 &) && wait && tar -cf /tmp/t.tar /etc && tar -tf /tmp/t.tar >/dev/null",
    )
    assert (ran.exit_status, ran.text) == (0, "hi\n"), ran.stderr


async def test_masked_and_read_only_paths(server: Server) -> None:
    await create(server, "mask")
    ran = await run(server, "mask", "cat", "/proc/self/mountinfo")
    mounts = {line.split()[4]: line for line in ran.text.splitlines()}
    for path in oci.MASKED_PATHS:
        if not os.path.exists(path):
            continue  # the kernel has no such file: nothing to hide
        assert path in mounts, f"{path} is not masked"
        listing = await sh(server, "mask", f"cat {path} 2>/dev/null || ls -A {path}")
        assert listing.stdout == b"", (path, listing.stdout[:200])
    assert os.path.exists("/proc/keys")  # the host has it: the test above checked it
    for path in oci.READONLY_PATHS:
        if not os.path.exists(path):
            continue
        assert " ro," in mounts[path] or mounts[path].split()[5].startswith("ro"), mounts[path]
    for script in ("echo 1 > /proc/sys/kernel/domainname", "echo 0 > /proc/sys/net/ipv4/ip_forward",
                   "echo 1 > /proc/sys/vm/drop_caches", "touch /sys/garden",
                   "echo 1 > /sys/kernel/profiling", "touch /sys/fs/x"):  # fmt: skip
        ran = await sh(server, "mask", script)
        assert ran.exit_status != 0, script
    assert mounts["/sys"].split()[5].startswith("ro")


async def test_devices_are_the_usual_ones(server: Server) -> None:
    await create(server, "dev")
    # every device node, wherever it is (crun adds a /dev/core symlink to the masked kcore)
    ran = await sh(server, "dev", "find /dev -type c -o -type b")
    assert sorted(ran.text.split()) == sorted(
        f"/dev/{n}" for n in ("full", "null", "random", "tty", "urandom", "zero", "pts/ptmx")
    )
    ran = await sh(
        server, "dev", "ls -lnL /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty"
    )
    majors = re.findall(r"^c\S+\s+\d+\s+\S+\s+\S+\s+(\d+),\s+(\d+)", ran.text, re.M)
    assert sorted(majors) == sorted(
        [("1", "3"), ("1", "5"), ("1", "7"), ("1", "8"), ("1", "9"), ("5", "0")]
    )
    # no new device nodes: mknod is not allowed for a device in a user namespace, and the
    # device cgroup would refuse opening it
    for script in ("mknod /tmp/sda b 8 0", "mknod /tmp/mem c 1 1", "mknod /tmp/kmsg c 1 11"):
        assert (await sh(server, "dev", script)).exit_status != 0, script
    assert (await sh(server, "dev", "head -c 4 /dev/urandom | wc -c")).text.strip() == "4"
    assert (
        await sh(server, "dev", "echo x > /dev/null && head -c 3 /dev/zero | wc -c")
    ).text == "3\n"


async def test_terminal_processes_work_under_the_filter(server: Server) -> None:
    await create(server, "tty")
    # The terminal's own behaviour (sizes, resize) is test_processes_api's; here: a process on a
    # terminal starts and its ioctls pass the filter. (Once, under crun and heavy load, `stty
    # size` right after start failed with ECHILD, not EPERM: not the filter's answer.)
    script = "tty && test -t 0 && test -t 1 && stty -g >/dev/null && echo ok"
    ran = await run(server, "tty", "sh", "-c", script, tty=True)
    lines = ran.stdout.decode().replace("\r", "").split("\n")
    assert ran.exit_status == 0, ran.stdout
    assert lines[0].startswith("/dev/pts/")
    assert lines[1] == "ok"


async def test_no_host_pids_mounts_network_or_hostname(server: Server) -> None:
    await create(server, "view")
    # processes: only the container's init and this shell (and its children)
    ran = await sh(server, "view", "ls /proc | grep -E '^[0-9]+$'; echo; cat /proc/1/cmdline")
    pids_text, _, init = ran.text.partition("\n\n")
    pids = [int(p) for p in pids_text.split()]
    assert 1 in pids and len(pids) <= 4, pids
    assert init.split("\0")[0] == "/.catatonit"
    # (a process the runtime is still entering the container with may show up briefly)
    ran = await sh(server, "view", "ps -o comm | tail -n +2")
    names = set(ran.text.split())
    assert {".catatonit", "sh", "ps"} <= names and len(names) <= 6, ran.text
    host_only = {"systemd", "kthreadd", "python", "python3", "conmon", "garden", "sshd"}
    assert names & host_only == set(), ran.text
    # hostname: the container's own
    assert (await run(server, "view", "hostname")).text == "view\n"
    # network: loopback and the container's end of its veth pair
    ran = await sh(server, "view", "ls /sys/class/net")
    assert sorted(ran.text.split()) == ["eth0", "lo"]
    # mounts: the rootfs overlay and the runtime's system mounts only; no host paths
    ran = await run(server, "view", "cat", "/proc/self/mountinfo")
    points = [line.split()[4] for line in ran.text.splitlines()]
    allowed = re.compile(r"^/(\.catatonit|\.garden-monitor|proc(/.*)?|dev(/.*)?|sys(/.*)?)?$")
    assert [p for p in points if not allowed.match(p)] == []
    # the two host binaries a container runs (its init, and the TTY helper): read-only
    for line in ran.text.splitlines():
        if line.split()[4] in ("/.catatonit", "/.garden-monitor"):
            assert "ro" in line.split()[5].split(","), line
    assert points[0] == "/" or "/" in points
    host_only = {"/var", "/work", "/boot", "/home", "/run", "/var/tmp"} & set(points)
    assert host_only == set()
