"""The name files of a container: `/etc/hosts` (localhost and the container's own hostname at
its address) and `/etc/resolv.conf` (the host's nameservers without loopback ones, which mean
nothing inside another namespace, or the servers given with `--dns-server`).

They are written into the container's rootfs (the overlay, mounted on the host) after its init
started and before any process of the user runs, owned by the container's root. The rootfs may
come from the user, so no symlink in it is ever followed.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from garden.errors import KernelError

HOST_RESOLV_CONF = "/etc/resolv.conf"


def hosts_file(hostname: str, container_ip: str) -> str:
    return (
        "127.0.0.1 localhost\n"
        "::1 localhost ip6-localhost ip6-loopback\n"
        f"{container_ip} {hostname}\n"
    )


def _is_loopback(server: str) -> bool:
    try:
        return ipaddress.ip_address(server.split("%")[0]).is_loopback
    except ValueError:
        return False


def resolv_conf(host_resolv: str, dns_servers: Sequence[str] = ()) -> str:
    """`dns_servers` when given; else the host's nameservers without loopback ones. The host's
    `search` and `options` lines are kept either way."""
    servers: list[str] = list(dns_servers)
    others: list[str] = []
    for raw in host_resolv.splitlines():
        words = raw.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            if not dns_servers and not _is_loopback(words[1]):
                servers.append(words[1])
        elif words[0] in ("search", "domain", "options"):
            others.append(" ".join(words))
    return "".join(f"nameserver {s}\n" for s in servers) + "".join(f"{o}\n" for o in others)


def read_host_resolv(path: str = HOST_RESOLV_CONF) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def write_name_files(rootfs: Path, files: dict[str, str], uid: int) -> None:
    """Write `files` (name -> text) into `rootfs`/etc, owned by `uid` (the container's root),
    mode 0644. `etc` is created when missing; a symlink at `etc` or at a file is never followed
    (a file that is one is replaced)."""
    try:
        root = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(f"open rootfs {rootfs}", exc) from exc
    try:
        try:
            os.mkdir("etc", 0o755, dir_fd=root)
            os.chown("etc", uid, uid, dir_fd=root, follow_symlinks=False)
        except FileExistsError:
            pass
        etc = os.open(
            "etc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root
        )
        try:
            for name, text in files.items():
                _write_at(etc, name, text.encode(), uid)
        finally:
            os.close(etc)
    except OSError as exc:
        raise KernelError(f"write {sorted(files)} into {rootfs}/etc", exc) from exc
    finally:
        os.close(root)


def _write_at(dir_fd: int, name: str, data: bytes, uid: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
    except OSError:
        # A symlink (or something else in the way): replace it with a plain file.
        os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, flags | os.O_EXCL, 0o644, dir_fd=dir_fd)
    try:
        os.fchown(fd, uid, uid)
        os.fchmod(fd, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
