"""The OCI runtime binary (runc or crun): creating, starting, signalling, deleting and querying
containers under the server's own `--root` state dir, and picking the runtime for this host.

The runtime hands its stdio to the container's init, so create/run get /dev/null for stdin and
stdout and a file for stderr (a pipe would be held open by the init forever).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

import trio

from garden.errors import RuntimeFailedError
from garden.linux.sealed_exe import sealed_copy

log = logging.getLogger(__name__)

RuntimeChoice = Literal["auto", "runc", "crun"]

_NOT_FOUND_HINTS = ("does not exist", "not exist", "no such file", "not found")


class Runtime:
    """`binary` is the runtime's file; `exe` what to execute (by default the same; the server
    runs a sealed in-memory copy of it, see `garden.linux.sealed_exe`)."""

    def __init__(
        self, binary: str, root: Path, *, name: str | None = None, exe: str | None = None
    ) -> None:
        self.binary = binary
        self.exe = exe or binary
        self.root = Path(root)
        self.name = name or Path(binary).name

    def _cmd(self, *args: str) -> list[str]:
        return [self.exe, "--root", str(self.root), *args]

    async def _run(self, what: str, *args: str) -> bytes:
        result = await trio.run_process(
            self._cmd(*args),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeFailedError(f"{self.name} {what}", _stderr_text(result.stderr))
        return bytes(result.stdout)

    async def _run_detached(self, what: str, container_id: str, bundle: Path, *args: str) -> int:
        """Run a command that leaves a container process behind; return its pid."""
        pid_file = bundle / "init.pid"
        err_file = bundle / f"{self.name}.err"
        cmd = self._cmd(*args, "--bundle", str(bundle), "--pid-file", str(pid_file), container_id)
        with open(err_file, "wb") as err:  # noqa: ASYNC230 (a local file, opened once)
            result = await trio.run_process(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeFailedError(f"{self.name} {what} {container_id}", _read_err(err_file))
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError) as e:
            raise RuntimeFailedError(f"{self.name} {what} {container_id}: read pid file", e) from e

    async def create(self, container_id: str, bundle: Path) -> int:
        """Create (not start) the container; return the host pid of its init."""
        return await self._run_detached("create", container_id, bundle, "create")

    async def start(self, container_id: str) -> None:
        await self._run(f"start {container_id}", "start", container_id)

    async def run(self, container_id: str, bundle: Path) -> int:
        """Create and start in one call (`run -d`); return the host pid of the init."""
        return await self._run_detached("run", container_id, bundle, "run", "--detach")

    async def kill(
        self, container_id: str, signal: str | int = "KILL", *, all: bool = True
    ) -> None:
        args = ["kill", *(["--all"] if all else []), container_id, str(signal)]
        await self._run(f"kill {container_id}", *args)

    async def delete(self, container_id: str, *, force: bool = False) -> None:
        """Delete the container's runtime state; an unknown container counts as done."""
        try:
            await self._run(
                f"delete {container_id}", "delete", *(["--force"] if force else []), container_id
            )
        except RuntimeFailedError as e:
            if not self.knows(container_id) or _is_not_found(e.message):
                return
            raise

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """The runtime's `state` JSON ("status": created/running/stopped, "pid"), None if the
        runtime does not know the container."""
        if not self.knows(container_id):
            await trio.lowlevel.checkpoint()
            return None
        try:
            out = await self._run(f"state {container_id}", "state", container_id)
        except RuntimeFailedError as e:
            if _is_not_found(e.message) or not self.knows(container_id):
                return None
            raise
        state: dict[str, Any] = json.loads(out)
        return state

    def knows(self, container_id: str) -> bool:
        """True if the runtime has state for the container (its dir under --root exists)."""
        return (self.root / container_id).is_dir()

    def container_ids(self) -> list[str]:
        """Ids of every container the runtime has state for under our --root."""
        try:
            with os.scandir(self.root) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []


async def _version(exe: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [exe, "--version"],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def _usable_exe(binary: str) -> tuple[str, subprocess.CompletedProcess[bytes]]:
    """What to run for `binary` and its `--version` answer: a sealed in-memory copy, or the
    file itself where a copy cannot be made or run (e.g. `vm.memfd_noexec` = 2): the runtime
    then protects itself at every call."""
    try:
        exe = sealed_copy(binary)
        result = await _version(exe)
        if result.returncode == 0:
            return exe, result
        reason = _stderr_text(result.stderr)
    except OSError as e:
        reason = str(e)
    log.warning("runtime-copy-unused binary=%s reason=%s", binary, reason)
    return binary, await _version(binary)


def _stderr_text(raw: bytes) -> str:
    return raw.decode(errors="replace").strip()[-2000:] or "(no output)"


def _read_err(path: Path) -> str:
    try:
        return _stderr_text(path.read_bytes())
    except OSError:
        return "(no output)"


def _is_not_found(message: str) -> bool:
    low = message.lower()
    return any(h in low for h in _NOT_FOUND_HINTS)


def crun_refuses_host(cgroup_root: Path = Path("/sys/fs/cgroup")) -> str | None:
    """Why crun 1.8 cannot run on this host, or None: on a hybrid layout (a cgroup2 mount at
    `unified` next to v1 hierarchies) it refuses unless that cgroup2 has no controllers."""
    if (cgroup_root / "cgroup.controllers").exists():
        return None  # pure v2
    controllers = cgroup_root / "unified" / "cgroup.controllers"
    try:
        held = controllers.read_text().split()
    except FileNotFoundError:
        return None  # pure v1
    if held:
        return (
            "crun refuses hybrid cgroup hosts whose cgroup2 mount holds controllers "
            f"({controllers}: {' '.join(held)})"
        )
    return None


# The runtime that made the containers under a --root; a later start keeps it while any remain
# (runc and crun cannot read each other's state).
CHOICE_FILE = ".garden-runtime"


def recorded_choice(root: Path) -> str | None:
    """The runtime recorded under `root`, if containers made by it are still there."""
    try:
        name = (root / CHOICE_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if name not in ("runc", "crun"):
        return None
    return name if Runtime(name, root).container_ids() else None


async def probe_runtime(
    preference: RuntimeChoice,
    *,
    root: Path,
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> Runtime:
    """The runtime to use: "auto" picks crun where it works, else runc — but keeps the runtime
    recorded under `root` while containers it made are there; an explicit choice that cannot
    work here raises RuntimeFailedError saying why."""
    reasons: list[str] = []
    kept = recorded_choice(root)
    if preference == "auto":
        names = [kept] if kept is not None else ["crun", "runc"]
    elif kept not in (None, preference):
        raise RuntimeFailedError(
            f"choose OCI runtime ({preference})",
            f"{root} holds containers made by {kept}; {preference} cannot manage them "
            "(destroy them first, or run with that runtime)",
        )
    else:
        names = [preference]
    for name in names:
        binary = shutil.which(name)
        if binary is None:
            reasons.append(f"{name}: not installed")
            continue
        refusal = crun_refuses_host(cgroup_root) if name == "crun" else None
        if refusal is not None:
            reasons.append(f"crun: {refusal}")
            continue
        exe, result = await _usable_exe(binary)
        if result.returncode != 0:
            reasons.append(f"{name}: --version failed: {_stderr_text(result.stderr)}")
            continue
        os.makedirs(root, mode=0o700, exist_ok=True)
        (root / CHOICE_FILE).write_text(name + "\n")
        return Runtime(binary, root, name=name, exe=exe)
    raise RuntimeFailedError(f"choose OCI runtime ({preference})", "; ".join(reasons))
