"""A running busybox container made directly with runc (no garden code), for process tests.

Rootfs: busybox-static + `--install -s`, etc/passwd with root and vcap (1000), catatonit -P as
init bind-mounted at /.catatonit, no user namespace, cgroup parent /gtest-proc-<random>. Torn down
with runc kill/delete and the cgroup parent removed from every hierarchy, even on failure; a
session killed before that is cleaned up by the next one (`owner` names its pytest process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from garden.linux import monitor, output
from garden.linux.proc import pid_start_time

BUSYBOX = "/bin/busybox"
CATATONIT = "/usr/bin/catatonit"
RUNC = shutil.which("runc") or "/usr/sbin/runc"


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: runc, namespaces and cgroups")
    for tool in ("runc", "conmon"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    for path in (BUSYBOX, CATATONIT):
        if not Path(path).exists():
            pytest.skip(f"needs {path}")


@dataclass(frozen=True)
class Container:
    id: str
    runtime_root: Path
    rootfs: Path
    init_pid: int
    socket_dir: Path
    processes: Path  # parent of the per-process dirs
    env: list[str]

    @property
    def root(self) -> Path:
        """The container's own view of its files (mounts included)."""
        return Path(f"/proc/{self.init_pid}/root")


def _make_rootfs(root: Path) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s"], check=True)
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    (root / "home" / "vcap").mkdir(parents=True)
    os.chown(root / "home" / "vcap", 1000, 1000)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nvcap:x:1000:1000:vcap:/home/vcap:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nvcap:x:1000:\nstaff:x:50:vcap\n")
    (root / ".catatonit").touch()


def _config(bundle: Path, cgroup: str) -> None:
    subprocess.run([RUNC, "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"].update(args=["/.catatonit", "-P"], terminal=False)
    spec["root"]["readonly"] = False
    spec["mounts"].append(
        {
            "destination": "/.catatonit",
            "type": "bind",
            "source": CATATONIT,
            "options": ["bind", "ro", "nosuid", "nodev"],
        }
    )
    spec["linux"]["cgroupsPath"] = cgroup
    (bundle / "config.json").write_text(json.dumps(spec))


def _remove_cgroup_parent(parent: str) -> None:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        leftover = hierarchy / parent.lstrip("/")
        if not leftover.is_dir():
            continue
        for child in sorted(leftover.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            try:
                child.rmdir()
            except FileNotFoundError:
                continue


def _tear_down(base: Path, cid: str, parent: str) -> None:
    runtime_root = base / "runc"
    for args in (["kill", cid, "KILL"], ["delete", "-f", cid]):
        subprocess.run(
            [RUNC, "--root", str(runtime_root), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    _remove_cgroup_parent(parent)
    shutil.rmtree(base, ignore_errors=True)


def _sweep_abandoned() -> None:
    """Tear down the containers of earlier sessions that were killed before their teardown
    (their `owner` file names a pytest process that is gone)."""
    for base in Path(tempfile.gettempdir()).glob("gtp-*"):
        try:
            pid, start, token = (base / "owner").read_text().split()
        except (OSError, ValueError):
            continue  # not ours, or a session that is still writing it
        if pid_start_time(int(pid)) == int(start):
            continue  # its session still runs
        _tear_down(base, f"gtest-proc-{token}", f"/gtest-proc-{token}")


@pytest.fixture(scope="session")
def container() -> Iterator[Container]:
    needs_root()
    _sweep_abandoned()
    token = uuid.uuid4().hex[:8]
    cid = f"gtest-proc-{token}"
    parent = f"/gtest-proc-{token}"
    base = Path(tempfile.mkdtemp(prefix="gtp-"))  # short: the attach socket path must fit
    (base / "owner").write_text(f"{os.getpid()} {pid_start_time(os.getpid())} {token}\n")
    bundle, runtime_root = base / "bundle", base / "runc"
    bundle.mkdir()
    (base / "p").mkdir()
    _make_rootfs(bundle / "rootfs")
    _config(bundle, f"{parent}/{cid}")
    pid_file = bundle / "init.pid"
    try:
        with open(base / "runc.err", "wb") as err:  # not a pipe: the init would hold it open
            subprocess.run(
                [RUNC, "--root", str(runtime_root), "run", "-d", "--pid-file", str(pid_file), cid],
                cwd=bundle,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                check=True,
            )
        yield Container(
            id=cid,
            runtime_root=runtime_root,
            rootfs=bundle / "rootfs",
            init_pid=int(pid_file.read_text()),
            socket_dir=base / "s",
            processes=base / "p",
            env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "CONTAINER=yes"],
        )
    finally:
        _tear_down(base, cid, parent)


@pytest.fixture
async def watcher() -> AsyncIterator[output.LogWatcher]:
    async with output.open_log_watcher() as w:
        yield w


@pytest.fixture(params=["conmon", "garden-monitor"])
def garden_monitor(request: pytest.FixtureRequest) -> str | None:
    """The monitor of a batch process, each in turn: conmon (None) or garden-monitor (its path;
    it fails, not skips, when it is not built, as scripts/setup.sh builds it)."""
    if request.param == "conmon":
        return None
    exe = monitor.find_garden_monitor()
    assert exe is not None, "garden-monitor is not built: run scripts/setup.sh"
    return exe
