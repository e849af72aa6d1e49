"""The OCI runtime spec (config.json) of a container, built from its plan. Pure: no I/O.

PID 1 is catatonit (`/.catatonit -P`, bind-mounted read-only from the host), which only reaps;
every real process is started later with the runtime's exec, which keeps the container's
seccomp filter, masks and namespaces and takes its capabilities from `capabilities` too.

Unprivileged containers (the default) get: a user namespace mapping container uid/gid
0..65535 to `uid_base`..; Garden's 14 capabilities (the same as Docker's default); the seccomp
allowlist of `garden.linux.seccomp`; the masked and read-only paths of runc's default spec
plus containerd's powercap mask; no devices beyond the runtime's defaults. Privileged ones
share the host's user namespace and get every capability the server holds, and no seccomp
filter: root in a privileged container is root on the host (docs/security.md).
"""

from __future__ import annotations

import resource
from typing import Any

from garden.linux import seccomp
from garden.linux.plan import ContainerPlan

ID_MAP_SIZE = 65536
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_NOFILE = 1 << 20

# Garden's capability set for unprivileged containers.
UNPRIVILEGED_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

# Privileged containers: every capability (as gdn and `docker --privileged` give), less those
# the server itself lacks (see `capabilities`).
PRIVILEGED_CAPS = [
    *UNPRIVILEGED_CAPS,
    "CAP_DAC_READ_SEARCH",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_LEASE",
    "CAP_AUDIT_CONTROL",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]

# runc's default spec (`runc spec`), as Docker and containerd use it, plus the RAPL power
# meters (CVE-2020-8694) that containerd and Docker also mask. A masked file reads as empty
# (/dev/null bound over it), a masked directory as an empty read-only tmpfs.
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
# Bound read-only over themselves (the kernel's sysctls, sysrq, bus and irq settings).
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


# Capability numbers (linux/capability.h), to read masks like CapBnd of /proc/<pid>/status.
CAP_NAMES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]  # fmt: skip


def caps_from_mask(mask: int) -> frozenset[str]:
    """Names of the capabilities set in `mask` (unknown bits are ignored)."""
    return frozenset(n for i, n in enumerate(CAP_NAMES) if mask >> i & 1)


def container_caps(privileged: bool, allowed: frozenset[str] | None = None) -> list[str]:
    """The capabilities of a (privileged or not) container's root. `allowed` is what the
    server itself may grant (its bounding set): the runtime fails to start a process asked for
    more, as on hosts without CAP_SYS_RESOURCE."""
    caps = PRIVILEGED_CAPS if privileged else UNPRIVILEGED_CAPS
    if allowed is not None:
        caps = [c for c in caps if c in allowed]
    return list(caps)


def capabilities(privileged: bool, allowed: frozenset[str] | None = None) -> dict[str, list[str]]:
    """The process capabilities object of a container's init (see `container_caps`)."""
    caps = container_caps(privileged, allowed)
    return {"bounding": list(caps), "effective": list(caps), "permitted": list(caps)}


def nofile_limit(current: tuple[int, int] | None = None) -> tuple[int, int]:
    """RLIMIT_NOFILE for containers: as high as we may go without CAP_SYS_RESOURCE (our own
    hard limit), capped at 2**20. `current` defaults to this process's limits."""
    _soft, hard = current if current is not None else resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > MAX_NOFILE:
        hard = MAX_NOFILE
    return hard, hard


TTY_HELPER = "/.garden-monitor"  # garden-monitor inside a container (`tty_helper_path`)


def mounts(
    plan: ContainerPlan, init_path: str, tty_helper_path: str | None = None
) -> list[dict[str, Any]]:
    userns = plan.uid_base is not None
    devpts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if not userns:
        devpts.append("gid=5")
    # sysfs can only be mounted by the owner of the network namespace: a user namespace that
    # joins a network namespace made outside it gets a read-only bind of the host's /sys.
    if userns and plan.netns_path is not None:
        sysfs = {
            "destination": "/sys",
            "type": "bind",
            "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
        }
    else:
        sysfs = {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        }
    out: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": devpts},
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        sysfs,
        {
            "destination": "/.catatonit",
            "type": "bind",
            "source": init_path,
            "options": ["bind", "ro", "nosuid", "nodev"],
        },
    ]
    if tty_helper_path is not None:  # its --tty-wait starts a TTY process (garden_monitor.c)
        out.append(
            {
                "destination": TTY_HELPER,
                "type": "bind",
                "source": tty_helper_path,
                "options": ["bind", "ro", "nosuid", "nodev"],
            }
        )
    for m in plan.bind_mounts:
        out.append(
            {
                "destination": m.destination,
                "type": "bind",
                "source": m.source,
                "options": ["bind", "ro" if m.read_only else "rw"],
            }
        )
    return out


def has_seccomp(plan: ContainerPlan) -> bool:
    """An unprivileged container's processes run under the seccomp filter; a privileged
    one's under none."""
    return plan.uid_base is not None


def namespaces(plan: ContainerPlan) -> list[dict[str, str]]:
    ns: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    net: dict[str, str] = {"type": "network"}
    if plan.netns_path is not None:
        net["path"] = plan.netns_path
    ns.append(net)
    if plan.uid_base is not None:
        ns.append({"type": "user"})
    return ns


def resources(plan: ContainerPlan, *, swap_accounting: bool) -> dict[str, Any]:
    """linux.resources: no devices, and the plan's memory, cpu and pids limits, which the
    runtime writes into the cgroup before the init runs."""
    out: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    r = plan.resources
    if r.memory_bytes is not None:
        out["memory"] = {"limit": r.memory_bytes}
        if swap_accounting:
            out["memory"]["swap"] = r.memory_bytes  # memory+swap: no swap beyond the limit
    if r.cpu_shares is not None:
        out["cpu"] = {"shares": r.cpu_shares}
    if r.pids_max is not None:
        out["pids"] = {"limit": r.pids_max}
    return out


def container_spec(
    plan: ContainerPlan,
    *,
    init_path: str = "/usr/bin/catatonit",
    tty_helper_path: str | None = None,
    nofile: tuple[int, int] | None = None,
    allowed_caps: frozenset[str] | None = None,
    swap_accounting: bool = False,
) -> dict[str, Any]:
    """The config.json of `plan`'s container; the bundle's rootfs is the "rootfs" subdir.
    `nofile` is (soft, hard) for RLIMIT_NOFILE, default from `nofile_limit()`; `allowed_caps`
    limits the capabilities to those the server holds (see `capabilities`); with
    `swap_accounting` a memory limit covers memory+swap too; `tty_helper_path` (garden-monitor)
    is mounted at `TTY_HELPER` to start TTY processes."""
    env = list(plan.env)
    if not any(e.startswith("PATH=") for e in env):
        env.append(DEFAULT_PATH)
    soft, hard = nofile if nofile is not None else nofile_limit()
    linux: dict[str, Any] = {
        "namespaces": namespaces(plan),
        "cgroupsPath": plan.cgroup_path,
        "resources": resources(plan, swap_accounting=swap_accounting),
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if plan.uid_base is not None:
        idmap = [{"containerID": 0, "hostID": plan.uid_base, "size": ID_MAP_SIZE}]
        linux["uidMappings"] = idmap
        linux["gidMappings"] = [dict(m) for m in idmap]
    if has_seccomp(plan):
        linux["seccomp"] = seccomp.profile()
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/.catatonit", "-P"],
            "env": env,
            "cwd": "/",
            "capabilities": capabilities(plan.uid_base is None, allowed_caps),
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": soft, "hard": hard}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": plan.hostname,
        "mounts": mounts(plan, init_path, tty_helper_path),
        "linux": linux,
    }
