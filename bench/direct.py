"""An OCI runtime (runc or crun) driven directly, the way a shell script would: an overlay over
the same shifted busybox lower layer and the same config.json as garden-trio's containers
(`garden.linux.oci.container_spec`), `run -d`, `exec`, kill + `delete`. Synchronous (blocking
waits, no polling): it runs in `bench.direct_worker`, one thread per request.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from garden.linux import oci
from garden.linux.plan import ContainerPlan
from garden.linux.proc import capability_bounding_mask

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_BIND = 4096
MNT_DETACH = 2
READ_SIZE = 1 << 20


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
        data.encode() if data else None,
    )  # fmt: skip
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def umount(target: str) -> None:
    if _libc.umount2(target.encode(), 0) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        if err == errno.EBUSY and _libc.umount2(target.encode(), MNT_DETACH) == 0:
            return
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


class Created(msgspec.Struct, frozen=True):
    id: str
    pid: int
    seconds: float


class Executed(msgspec.Struct, frozen=True):
    status: int
    stdout_bytes: int
    seconds: float


class DirectRuntime:
    def __init__(
        self,
        *,
        binary: str,
        root: Path,
        work_dir: Path,
        lower: Path,
        cgroup_parent: str,
        uid_base: int,
        init_path: str = "/usr/bin/catatonit",
    ) -> None:
        self.binary = binary
        self.root = root
        self.work_dir = work_dir
        self.lower = lower
        self.cgroup_parent = cgroup_parent
        self.uid_base = uid_base
        self.init_path = init_path
        self.caps = oci.caps_from_mask(capability_bounding_mask())
        self._pids: dict[str, int] = {}
        self._lock = threading.Lock()
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o711)

    def _cmd(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    def create(self) -> Created:
        cid = secrets.token_hex(8)
        bundle = self.work_dir / cid
        started = time.perf_counter()
        bundle.mkdir(mode=0o711)
        for name in ("upper", "work", "rootfs"):
            (bundle / name).mkdir(mode=0o755)
        os.chown(bundle / "upper", self.uid_base, self.uid_base)
        options = f"lowerdir={self.lower},upperdir={bundle}/upper,workdir={bundle}/work,index=off"
        mount("overlay", str(bundle / "rootfs"), "overlay", 0, options)
        plan = ContainerPlan(
            handle=cid, container_id=cid, container_path=str(bundle), rootfs=str(self.lower),
            hostname=cid, env=[], bind_mounts=[], uid_base=self.uid_base,
            cgroup_path=f"{self.cgroup_parent}/{cid}",
        )  # fmt: skip
        spec = oci.container_spec(plan, init_path=self.init_path, allowed_caps=self.caps)
        (bundle / "config.json").write_bytes(msgspec.json.encode(spec))
        with open(bundle / "runtime.err", "wb") as err:
            rc = subprocess.call(
                self._cmd("run", "-d", "--bundle", str(bundle), "--pid-file", f"{bundle}/pid", cid),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        if rc != 0:
            message = (bundle / "runtime.err").read_text(errors="replace")[-500:]
            self._remove_bundle(bundle)
            raise RuntimeError(f"{self.binary} run: exit {rc}: {message}")
        pid = int((bundle / "pid").read_text())
        seconds = time.perf_counter() - started
        with self._lock:
            self._pids[cid] = pid
        return Created(cid, pid, seconds)

    def destroy(self, id: str) -> float:
        bundle = self.work_dir / id
        started = time.perf_counter()
        with self._lock:
            pid = self._pids.pop(id, 0)
        if pid:
            _kill_and_wait(pid)
        subprocess.call(
            self._cmd("delete", id), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        self._remove_bundle(bundle)
        return time.perf_counter() - started

    def _remove_bundle(self, bundle: Path) -> None:
        umount(str(bundle / "rootfs"))
        shutil.rmtree(bundle, ignore_errors=True)

    def exec(self, id: str, argv: list[str]) -> Executed:
        """Run `argv` in the container; its stdout is read (and counted) through a pipe."""
        started = time.perf_counter()
        proc = subprocess.Popen(
            self._cmd("exec", id, *argv),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        total = 0
        while chunk := os.read(fd, READ_SIZE):
            total += len(chunk)
        proc.stdout.close()
        status = proc.wait()
        return Executed(status, total, time.perf_counter() - started)

    def init_pids(self) -> dict[str, int]:
        with self._lock:
            return dict(self._pids)

    def sweep(self) -> list[str]:
        """Force-delete every container the runtime knows under our --root, and the bundles."""
        swept = []
        names = os.listdir(self.root) if self.root.is_dir() else []
        for cid in names:
            subprocess.call(
                self._cmd("delete", "--force", cid),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            swept.append(cid)
        for entry in os.listdir(self.work_dir):
            if (self.work_dir / entry / "rootfs").exists():
                self._remove_bundle(self.work_dir / entry)
        with self._lock:
            self._pids.clear()
        return swept

    def version(self) -> str:
        out = subprocess.run(self._cmd("--version"), capture_output=True, check=False)
        return out.stdout.decode(errors="replace").splitlines()[0] if out.stdout else "?"

    def call(self, op: str, args: dict[str, Any]) -> object:
        """The worker's dispatch: only the operations above."""
        if op not in ("create", "destroy", "exec", "init_pids", "sweep", "version"):
            raise ValueError(f"unknown op {op!r}")
        return getattr(self, op)(**args)


def _kill_and_wait(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(10_000)
        os.close(fd)
