"""The plan from which garden-monitor execs a process into a running container itself
(`garden-monitor DIR EXIT --join`, garden/linux/native/join.c; docs/adr/garden-monitor-exec.md).

`Join` is what the container contributes (its init, the namespaces to join, one cgroup.procs
file per hierarchy, the seccomp filter as raw BPF); `encode(process, join)` turns an OCI
process object (`process_spec.build_process`) and a `Join` into the plan's bytes: NUL-terminated
strings, key then value, in the format join.c documents. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from garden.linux.oci import CAP_NAMES
from garden.linux.process_spec import RLIMITS

# CLONE_NEW* flags (os has them only from Python 3.12).
CLONE_FLAGS = {
    "mount": 0x00020000,
    "cgroup": 0x02000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "network": 0x40000000,
}
_CAP_BITS = {name: bit for bit, name in enumerate(CAP_NAMES)}
_UMASK = 0o022  # what runc and crun give a process whose spec names none


class Join(msgspec.Struct, frozen=True, kw_only=True):
    """The running container a process joins."""

    init_pid: int
    init_start_time: int  # /proc/<pid>/stat field 22: the pidfd is opened only for this init
    namespaces: int  # CLONE_NEW* flags, CLONE_NEWPID among them
    cgroup_procs: tuple[str, ...]  # host paths of the cgroup.procs files to join
    seccomp_bpf: str | None  # host path of the raw filter, None: the container has none


def namespace_flags(namespaces: Iterable[Mapping[str, Any]]) -> int:
    """CLONE_NEW* flags of OCI `linux.namespaces` entries (those a container made or joined:
    the process joins them all through the init)."""
    flags = 0
    for ns in namespaces:
        kind = str(ns.get("type"))
        if kind not in CLONE_FLAGS:
            raise ValueError(f"unknown namespace type {kind!r}")
        flags |= CLONE_FLAGS[kind]
    return flags


def cap_mask(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        if name not in _CAP_BITS:
            raise ValueError(f"unknown capability {name!r}")
        mask |= 1 << _CAP_BITS[name]
    return mask


def encode(process: Mapping[str, Any], join: Join, executable: str | None = None) -> bytes:
    """The plan's bytes for `process` (an OCI process object without a terminal);
    `executable`: the path to exec for its args[0] (else garden-monitor looks it up)."""
    if process.get("terminal"):
        raise ValueError("garden-monitor does not give a process a terminal")
    user = process["user"]
    caps = process.get("capabilities") or {}
    pairs: list[tuple[str, str]] = [
        ("ns", str(join.namespaces)),
        *(("cgroup", path) for path in join.cgroup_procs),
        *((("seccomp", join.seccomp_bpf),) if join.seccomp_bpf else ()),
        *(("rlimit", _rlimit(r)) for r in process.get("rlimits") or ()),
        ("uid", str(int(user["uid"]))),
        ("gid", str(int(user["gid"]))),
        *(("group", str(int(g))) for g in user.get("additionalGids") or ()),
        *((kind, f"{cap_mask(caps.get(kind) or ()):x}") for kind in _CAP_KINDS),
        ("no_new_privs", "1" if process.get("noNewPrivileges") else "0"),
        ("umask", f"{int(user.get('umask', _UMASK)):o}"),
        ("cwd", str(process["cwd"])),
        *((("exe", executable),) if executable else ()),
        *(("arg", str(a)) for a in _nonempty(process["args"], "args")),
        *(("env", str(e)) for e in process.get("env") or ()),
    ]
    out = bytearray()
    for key, value in pairs:
        data = value.encode()
        if b"\0" in data:
            raise ValueError(f"{key} holds a NUL byte")
        out += key.encode() + b"\0" + data + b"\0"
    return bytes(out)


_CAP_KINDS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def _rlimit(r: Mapping[str, Any]) -> str:
    name = str(r["type"]).removeprefix("RLIMIT_").lower()
    return f"{RLIMITS[name]} {int(r['soft'])} {int(r['hard'])}"


def _nonempty(args: Sequence[Any], what: str) -> Sequence[Any]:
    if not args:
        raise ValueError(f"a process needs {what}")
    return args
