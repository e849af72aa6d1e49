"""The OCI `process` object (process.json) for `runc exec --process`, and the checks made
against the container's filesystem before a process is spawned.

Pure builders (no I/O):
- `merge_env(container_env, process_env)`: later wins; a name keeps the position of its first
  occurrence and takes the value of its last; `PATH`, `HOME`, `USER` defaults are appended when
  absent.
- `capabilities(privileged_container, uid, allowed)`: listed explicitly (runc exec uses exactly
  what it is given). They follow the container, as in Garden: an unprivileged container's
  processes get Garden's 14 caps, a privileged one's every cap the server holds (`allowed`).
  The process spec's `privileged` only picks the default user (root); it never adds
  capabilities. For a non-root uid the effective and permitted sets are empty (the bounding
  set stays).
- `oci_rlimits(requested, ceiling)`: `{"nofile": n, ...}` (setrlimit names without `RLIMIT_`) →
  OCI rlimits with soft = hard = n. A value above the `ceiling` (the server's own hard limit:
  without CAP_SYS_RESOURCE a hard limit can only be lowered, and runc would fail the exec with
  EPERM) is an `InvalidRequestError` naming the maximum: never silently lowered.
- `build_process(...)`: the whole object.

Filesystem checks (read the container's files; `root` is best `/proc/<init pid>/root`, the
container's own view including its bind mounts; the host rootfs dir also works):
- `find_executable(root, path, env, cwd)`: PATH lookup like runc's (a `path` without `/` is looked
  up on the merged env's PATH; with `/` it is taken relative to `cwd`), every path resolved with
  openat2(RESOLVE_IN_ROOT), so symlinks (absolute ones too) never lead out of `root`. Raises
  `ExecutableNotFoundError` unless it finds a regular file with an execute bit.
- `ensure_dir(root, path, uid, gid)`: creates a missing working directory (and parents) inside
  `root`, new directories owned by the given *host* uid/gid.
Both resolve every path with `garden.linux.inroot` (openat2 RESOLVE_IN_ROOT).
- `rlimit_ceiling()`: the server's own hard limits (None where there is no ceiling).
"""

from __future__ import annotations

import errno
import os
import posixpath
import resource
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from garden.errors import ExecutableNotFoundError, InvalidRequestError
from garden.linux import inroot, users
from garden.linux.oci import container_caps

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# setrlimit resource numbers of Linux's generic ABI (x86, arm, riscv): Python lacks a few names.
_RLIMIT_NAMES = "cpu fsize data stack core rss nproc nofile memlock as locks sigpending msgqueue"
RLIMITS: dict[str, int] = {
    name: number for number, name in enumerate([*_RLIMIT_NAMES.split(), "nice", "rtprio", "rttime"])
}
_U64_MAX = (1 << 64) - 1
_CAP_SYS_RESOURCE = 24


def merge_env(
    container_env: Iterable[str], process_env: Iterable[str], *, defaults: Iterable[str] = ()
) -> list[str]:
    """Container env then process env, later wins; `defaults` only fill in missing names."""
    merged: dict[str, str] = {}
    for entry in [*container_env, *process_env]:
        merged[entry.partition("=")[0]] = entry  # a dict keeps the first position
    for entry in defaults:
        merged.setdefault(entry.partition("=")[0], entry)
    return list(merged.values())


def env_value(env: Iterable[str], name: str) -> str | None:
    """The value of `name` in a `NAME=value` list (the last one wins), None if absent."""
    value = None
    for entry in env:
        key, sep, rest = entry.partition("=")
        if sep and key == name:
            value = rest
    return value


def capabilities(
    privileged_container: bool, uid: int, allowed: frozenset[str] | None = None
) -> dict[str, list[str]]:
    """The OCI capabilities object: bounding always; effective/permitted only for uid 0."""
    caps = container_caps(privileged_container, allowed)
    granted = list(caps) if uid == 0 else []
    return {"bounding": caps, "effective": granted, "permitted": list(granted)}


def rlimit_ceiling() -> dict[str, int | None]:
    """The highest hard limit this server can give, by name; None = no ceiling (unlimited,
    or we hold CAP_SYS_RESOURCE and may raise hard limits)."""
    if _has_cap(_CAP_SYS_RESOURCE):
        return dict.fromkeys(RLIMITS)
    out: dict[str, int | None] = {}
    for name, res in RLIMITS.items():
        hard = resource.getrlimit(res)[1]
        out[name] = None if hard == resource.RLIM_INFINITY else hard
    return out


def oci_rlimits(
    requested: Mapping[str, int], ceiling: Mapping[str, int | None]
) -> list[dict[str, Any]]:
    """OCI rlimits (soft = hard = value) for the requested limits, checked against `ceiling`."""
    out: list[dict[str, Any]] = []
    for name, value in sorted(requested.items()):
        key = name.lower()
        if key not in RLIMITS:
            raise InvalidRequestError(f"unknown rlimit {name!r}; known: {', '.join(RLIMITS)}")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
            raise InvalidRequestError(f"rlimit {name}: {value!r} is not an integer in 0..2^64-1")
        limit = ceiling.get(key)
        if limit is not None and value > limit:
            raise InvalidRequestError(
                f"rlimit {name}={value} is above what this host can grant (at most {limit})"
            )
        out.append({"type": f"RLIMIT_{key.upper()}", "soft": value, "hard": value})
    return out


def build_process(
    *,
    args: Sequence[str],
    env: Sequence[str],
    cwd: str,
    uid: int,
    gid: int,
    additional_gids: Sequence[int] = (),
    privileged_container: bool = False,
    allowed_caps: frozenset[str] | None = None,
    rlimits: Sequence[Mapping[str, Any]] = (),
    tty: bool = False,
    console_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The process.json object. `env` is already merged; `console_size` is (rows, columns);
    capabilities as `capabilities` says."""
    if not args:
        raise InvalidRequestError("a process needs a path")
    user: dict[str, Any] = {"uid": uid, "gid": gid}
    if additional_gids:
        user["additionalGids"] = list(additional_gids)
    process: dict[str, Any] = {
        "terminal": tty,
        "user": user,
        "args": list(args),
        "env": list(env),
        "cwd": cwd,
        "capabilities": capabilities(privileged_container, uid, allowed_caps),
        "noNewPrivileges": True,
    }
    if rlimits:
        process["rlimits"] = [dict(r) for r in rlimits]
    if tty and console_size is not None:
        rows, cols = console_size
        process["consoleSize"] = {"height": rows, "width": cols}
    return process


# --- filesystem checks inside the container's root -------------------------------------------


def _open_in_root(root_fd: int, rel: str, flags: int) -> int:
    """`rel` opened as if root_fd were "/" (see `garden.linux.inroot`)."""
    return inroot.open_in_root(root_fd, rel, flags)


def has_executable(root: str | Path, path: str) -> bool:
    """Whether `path` (absolute, resolved inside `root`) is a regular file with an execute bit."""
    with inroot.opened_root(root) as root_fd:
        return _is_executable(root_fd, path)


def _is_executable(root_fd: int, path: str) -> bool:
    try:
        fd = _open_in_root(root_fd, path.lstrip("/"), os.O_PATH)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EXDEV):
            return False
        raise
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return stat.S_ISREG(st.st_mode) and st.st_mode & 0o111 != 0


def find_executable(root: str | Path, path: str, env: Iterable[str], cwd: str = "/") -> str:
    """The container path that will run for `path`; `ExecutableNotFoundError` if none.

    Returns `path` unchanged when it contains a `/` (absolute, or relative to `cwd`), else the
    first `<dir>/<path>` on the env's PATH (default `DEFAULT_PATH`) that is a regular file with
    an execute bit. Symlinks are followed, but only inside `root`.
    """
    if not path:
        raise ExecutableNotFoundError("empty path")
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if "/" in path:
            if _is_executable(root_fd, posixpath.join(cwd, path)):
                return path
        else:
            search = env_value(env, "PATH")
            for d in (search if search is not None else DEFAULT_PATH).split(":"):
                candidate = posixpath.join(cwd, d or ".", path)
                if _is_executable(root_fd, candidate):
                    return posixpath.join(d, path) if d.startswith("/") else candidate
    finally:
        os.close(root_fd)
    raise ExecutableNotFoundError(f"executable not found: {path}")


def ensure_dir(root: str | Path, path: str, uid: int, gid: int) -> None:
    """Create `path` (absolute, inside `root`) and missing parents, new ones owned by the host
    `uid`/`gid` with mode 0755; existing directories are left as they are."""
    try:
        with inroot.opened_root(root) as root_fd:
            os.close(inroot.make_dirs(root_fd, posixpath.normpath("/" + path), uid=uid, gid=gid))
    except OSError as e:
        raise InvalidRequestError(f"cannot create working directory {path}: {e.strerror}") from e


def _has_cap(bit: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        return False
    return False


class Prepared(msgspec.Struct, frozen=True, kw_only=True):
    process: dict[str, Any]  # the OCI process object (process.json)
    executable: str  # what `find_executable` found for its args[0], in the container


def prepare_process(
    root: str | Path,
    *,
    path: str,
    args: Sequence[str] = (),
    container_env: Sequence[str] = (),
    env: Sequence[str] = (),
    dir: str | None = None,
    user: str | None = None,
    privileged: bool = False,
    privileged_container: bool = False,
    allowed_caps: frozenset[str] | None = None,
    limits: Mapping[str, int] | None = None,
    tty: bool = False,
    console_size: tuple[int, int] | None = None,
    host_id_offset: int = 0,
    ceiling: Mapping[str, int | None] | None = None,
) -> Prepared:
    """Everything API.md's process spec asks, in one call: resolve `user` (default `root` when
    `privileged`, else `vcap`) in `root`'s etc/passwd, default `dir` to its home and create it
    when missing (owned by uid/gid + `host_id_offset`, the container's uid map base or 0), find
    the executable, merge env (adding `HOME`, `USER` and `PATH` when absent) and build process.json
    with the capabilities of the container (`privileged_container`, `allowed_caps`).

    Raises `InvalidRequestError` (unknown user, bad rlimit, cwd not creatable) or
    `ExecutableNotFoundError`.
    """
    name = user or ("root" if privileged else "vcap")
    ids = users.lookup_user(root, name)
    login = name.partition(":")[0]
    extra_gids = [] if login.isdigit() else users.supplementary_gids(root, login, ids.gid)
    cwd = dir or ids.home
    if not cwd.startswith("/"):
        cwd = posixpath.join(ids.home, cwd)
    ensure_dir(root, cwd, ids.uid + host_id_offset, ids.gid + host_id_offset)
    defaults = [f"HOME={ids.home}", f"PATH={DEFAULT_PATH}"]
    if not login.isdigit():
        defaults.append(f"USER={login}")
    merged = merge_env(container_env, env, defaults=defaults)
    executable = find_executable(root, path, merged, cwd)
    process = build_process(
        args=[path, *args],
        env=merged,
        cwd=cwd,
        uid=ids.uid,
        gid=ids.gid,
        additional_gids=extra_gids,
        privileged_container=privileged_container,
        allowed_caps=allowed_caps,
        rlimits=oci_rlimits(limits or {}, rlimit_ceiling() if ceiling is None else ceiling),
        tty=tty,
        console_size=console_size,
    )
    return Prepared(process=process, executable=executable)
