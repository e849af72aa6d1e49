"""The plan garden-monitor's own exec reads (garden/linux/join_plan.py, format in join.c)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from garden.linux import join_plan
from garden.linux.join_plan import Join
from garden.linux.oci import UNPRIVILEGED_CAPS, caps_from_mask
from garden.linux.process_spec import build_process

JOIN = Join(
    init_pid=42,
    init_start_time=7,
    namespaces=join_plan.namespace_flags([{"type": "pid"}, {"type": "mount"}, {"type": "user"}]),
    cgroup_procs=("/sys/fs/cgroup/memory/g/c/cgroup.procs", "/sys/fs/cgroup/pids/g/c/cgroup.procs"),
    seccomp_bpf="/run/state/c/seccomp.bpf",
)


def pairs(plan: bytes) -> list[tuple[str, str]]:
    assert plan.endswith(b"\0")
    strings = plan[:-1].decode().split("\0")
    assert len(strings) % 2 == 0
    return list(zip(strings[::2], strings[1::2], strict=True))


def process(**kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "args": ["sh", "-c", "echo hi"],
        "env": ["PATH=/bin", "HOME=/root"],
        "cwd": "/root",
        "uid": 0,
        "gid": 0,
    }
    spec.update(kw)
    return build_process(**spec)


def test_every_field_of_the_process_and_the_join_is_in_the_plan() -> None:
    p = process(
        additional_gids=[50, 60],
        rlimits=[{"type": "RLIMIT_NPROC", "soft": 10, "hard": 20}],
    )
    got = pairs(join_plan.encode(p, JOIN))
    assert got[:3] == [("ns", str(0x20000 | 0x20000000 | 0x10000000)), *[
        ("cgroup", path) for path in JOIN.cgroup_procs
    ]]  # fmt: skip
    d = dict(got)
    assert d["seccomp"] == "/run/state/c/seccomp.bpf"
    assert ("rlimit", "6 10 20") in got  # RLIMIT_NPROC is 6
    assert (d["uid"], d["gid"]) == ("0", "0")
    assert [v for k, v in got if k == "group"] == ["50", "60"]
    assert caps_from_mask(int(d["bounding"], 16)) == set(UNPRIVILEGED_CAPS)
    assert d["effective"] == d["permitted"] == d["bounding"]
    assert d["inheritable"] == d["ambient"] == "0"
    assert (d["no_new_privs"], d["umask"], d["cwd"]) == ("1", "22", "/root")
    assert "exe" not in d  # garden-monitor looks args[0] up itself
    assert [v for k, v in got if k == "arg"] == ["sh", "-c", "echo hi"]
    assert [v for k, v in got if k == "env"] == ["PATH=/bin", "HOME=/root"]


def test_a_non_root_user_gets_no_effective_capabilities_and_no_filter_without_one() -> None:
    p = process(uid=1000, gid=1000, privileged_container=False)
    d = dict(pairs(join_plan.encode(p, msgspec.structs.replace(JOIN, seccomp_bpf=None))))
    assert "seccomp" not in d
    assert (d["uid"], d["effective"], d["permitted"]) == ("1000", "0", "0")
    assert d["bounding"] != "0"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"terminal": True}, "terminal"),
        ({"args": []}, "needs args"),
        ({"args": ["sh", "a\0b"]}, "NUL"),
        ({"env": ["A=\0"]}, "NUL"),
        ({"cwd": "/a\0"}, "NUL"),
    ],
)
def test_what_the_plan_cannot_say_is_refused(change: dict[str, Any], error: str) -> None:
    p = {**process(), **change}
    with pytest.raises(ValueError, match=error):
        join_plan.encode(p, JOIN)


def test_unknown_namespaces_and_capabilities_are_refused() -> None:
    with pytest.raises(ValueError, match="namespace"):
        join_plan.namespace_flags([{"type": "time"}])
    with pytest.raises(ValueError, match="capability"):
        join_plan.cap_mask(["CAP_NO_SUCH"])
    assert join_plan.cap_mask(["CAP_CHOWN", "CAP_KILL"]) == 1 | 1 << 5


def test_the_executable_found_comes_before_the_args() -> None:
    got = pairs(join_plan.encode(process(), JOIN, "/bin/sh"))
    keys = [k for k, _ in got]
    assert ("exe", "/bin/sh") in got and keys.index("exe") < keys.index("arg")
