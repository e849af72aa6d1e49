"""garden-monitor's own exec (`--process-exec auto`, garden/linux/native/join.c) against the OCI
runtime's `exec` (`--process-exec runtime`) on the same containers of a real server: a process
must see exactly the same of itself either way (user, groups, umask, capabilities, no_new_privs,
seccomp, cgroups, namespaces, rlimits, session, fds, dir, env, root), in an unprivileged and in
a privileged container, as root and as vcap. The server is restarted between the two (the
containers and their inits stay), so both run in the very same namespaces and cgroups."""

from __future__ import annotations

import json
import signal
from typing import Any

import httpx
import pytest

from garden.linux.runtime import crun_refuses_host
from tests.integration.conftest import ServerProcess, leftovers

pytestmark = pytest.mark.root

# What a process can see of how it was started. Nothing in it differs between two runs of the
# same spec but what the spec or the start changes (no pids, no times).
PROBE = r"""
for f in Uid Gid Groups Umask CapInh CapPrm CapEff CapBnd CapAmb NoNewPrivs Seccomp \
    Seccomp_filters Speculation_Store_Bypass SpeculationIndirectBranch; do
  grep "^$f:" /proc/self/status || echo "$f: (none)"
done
cat /proc/self/cgroup
for n in cgroup ipc mnt net pid pid_for_children time time_for_children user uts; do
  echo "$n $(readlink /proc/self/ns/$n)"
done
cat /proc/self/limits
set -- $(cut -d' ' -f5,6,7,8,19 /proc/$$/stat)
[ "$2" = "$$" ] && set -- leader leader $3 $4 $5
echo "session pgrp session tty tpgid nice: $*"
echo "oom_score_adj $(cat /proc/self/oom_score_adj)"
ls /proc/$$/fd > /tmp/fds.$$  # (not in a $(...): its pipe shows up, sometimes twice)
echo "fds $(tr '\n' ' ' < /tmp/fds.$$)"
echo "stdin $(readlink /proc/$$/fd/0)"
echo "pwd $(pwd)"
env | sort
ls /
hostname
"""
SPECS: list[dict[str, Any]] = [
    {"user": "root", "rlimits": {"nproc": 500, "nofile": 1000, "core": 0}, "env": ["A=1"]},
    {"user": "vcap", "dir": "/tmp/work", "env": ["B=2", "PATH=/bin:/usr/bin"]},
    {"privileged": True},  # the default user of a privileged process: root
    {"user": None},  # the default user: vcap
]


def probe_all(c: httpx.Client, handle: str, mode: str) -> list[tuple[str, int]]:
    out = []
    for i, spec in enumerate(SPECS):
        body = {"path": "sh", "args": ["-c", PROBE], "id": f"{handle}-{mode}-{i}", **spec}
        if body.get("user", "") is None:
            del body["user"]
        with c.stream("POST", f"/containers/{handle}/processes", json=body) as r:
            assert r.status_code == 200, r.read()
            payloads = [json.loads(line) for line in r.iter_lines() if line]
        errors = "".join(p["data"] for p in payloads if p.get("source") == "stderr")
        assert errors == "", errors
        text = "".join(p["data"] for p in payloads if p.get("source") == "stdout")
        out.append((text, payloads[-1]["exit_status"]))
    return out


def field(text: str, name: str) -> list[str]:
    """The values of one `Name:` line of the probe's /proc/self/status part."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.split()
    raise AssertionError(f"no {name} line in {text!r}")


def without_session(text: str) -> str:
    return "".join(line for line in text.splitlines(True) if not line.startswith("session "))


def with_process_json(sp: ServerProcess) -> dict[str, bool]:
    """Whether each process dir has a process.json: only the runtime's exec needs one."""
    dirs = sp.state_dir.glob("containers/*/processes/*")
    return {d.name: (d / "process.json").exists() for d in dirs}


@pytest.mark.parametrize("runtime", ["crun", "runc"])
def test_a_process_sees_the_same_whoever_execs_it(
    server_process: ServerProcess, runtime: str
) -> None:
    if runtime == "crun" and (why := crun_refuses_host()) is not None:
        pytest.skip(f"crun cannot run on this host: {why}")
    sp = server_process
    sp.extra_args = ["--runtime", runtime]
    sp.start()
    handles = ["plain", "priv"]
    with httpx.Client(base_url=sp.url, timeout=60) as c:
        for handle in handles:
            r = c.post("/containers", json={"handle": handle, "privileged": handle == "priv"})
            assert r.status_code == 200, r.text
        r = c.put(
            "/containers/plain/files",
            params={"destination": "/etc/group"},
            content=b"root:x:0:\nvcap:x:1000:\nstaff:x:50:vcap\nnogroup:x:65534:\n",
        )
        assert r.status_code == 200, r.text
        own = {h: probe_all(c, h, "own") for h in handles}
    sp.kill(signal.SIGTERM)
    sp.extra_args = ["--runtime", runtime, "--process-exec", "runtime"]
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=60) as c:
        theirs = {h: probe_all(c, h, "runtime") for h in handles}
        # Which exec ran shows in the process dirs. runc keeps no compiled seccomp filter, so
        # the runtime execs into its unprivileged container either way.
        fell_back = runtime == "runc"
        assert with_process_json(sp) == {
            **{f"plain-own-{i}": fell_back for i in range(len(SPECS))},
            **{f"priv-own-{i}": False for i in range(len(SPECS))},
            **{f"{h}-runtime-{i}": True for h in handles for i in range(len(SPECS))},
        }
        for handle in handles:
            assert c.delete(f"/containers/{handle}").status_code == 200
    for handle in handles:
        for (mine, my_status), (its, its_status) in zip(own[handle], theirs[handle], strict=True):
            assert (my_status, its_status) == (0, 0)
            if runtime == "runc":
                # runc makes an exec'd process a session leader; crun leaves it in the
                # monitor's session (0 inside), and so does garden-monitor.
                mine, its = without_session(mine), without_session(its)
            assert mine == its
    # The probe saw what the specs asked (so that the comparison compares something).
    assert field(own["plain"][0][0], "Groups") == []
    assert field(own["plain"][1][0], "Groups") == ["50"]
    assert field(own["plain"][1][0], "Uid") == ["1000"] * 4
    assert "Max processes             500                  500" in own["plain"][0][0]
    assert "pwd /tmp/work" in own["plain"][1][0]
    assert field(own["plain"][0][0], "Seccomp") == ["2"]
    assert field(own["priv"][2][0], "Seccomp") == ["0"]
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []


def test_the_own_exec_is_what_runs(server_process: ServerProcess) -> None:
    """With crun (which keeps the container's compiled filter) a batch process is exec'd by
    garden-monitor: no process.json, a `pid` file the monitor wrote; a process with stdin
    still runs under conmon and the runtime."""
    if (why := crun_refuses_host()) is not None:
        pytest.skip(f"crun cannot run on this host: {why}")
    sp = server_process
    sp.extra_args = ["--runtime", "crun"]
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=60) as c:
        assert c.post("/containers", json={"handle": "c"}).status_code == 200
        body = {"path": "sh", "args": ["-c", "echo hi; exit 3"], "id": "batch"}
        with c.stream("POST", "/containers/c/processes", json=body) as r:
            payloads = [json.loads(line) for line in r.iter_lines() if line]
        assert payloads[-1]["exit_status"] == 3
        (pdir,) = sp.state_dir.glob("containers/*/processes/batch")
        assert sorted(p.name for p in pdir.iterdir()) == [
            "exit", "monitor.pid", "order", "pid", "stderr", "stdout",
        ]  # fmt: skip
        assert (pdir / "stdout").read_bytes() == b"hi\n"
        assert c.delete("/containers/c").status_code == 200
    sp.kill(signal.SIGTERM)
    assert leftovers(sp.config) == []
