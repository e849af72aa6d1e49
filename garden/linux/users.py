"""Users and groups of a container's rootfs: read its etc/passwd and etc/group without ever
leaving the rootfs (symlinks resolve inside it, as they would in the container; see
`garden.linux.inroot`). `rootfs` is a path or an O_PATH dirfd of the container's root.
"""

from __future__ import annotations

from typing import NamedTuple

from garden.errors import InvalidRequestError
from garden.linux.inroot import Root, read_file_in_root

__all__ = ["UserIds", "lookup_user", "read_file_in_root", "supplementary_gids"]


class UserIds(NamedTuple):
    uid: int
    gid: int
    home: str


def _entries(rootfs: Root, rel: str) -> list[list[str]]:
    data = read_file_in_root(rootfs, rel)
    if data is None:
        return []
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


def _find_passwd(
    rootfs: Root, *, name: str | None = None, uid: int | None = None
) -> UserIds | None:
    for f in _entries(rootfs, "etc/passwd"):
        if len(f) < 7 or not f[2].isdigit() or not f[3].isdigit():
            continue
        if (name is not None and f[0] == name) or (uid is not None and int(f[2]) == uid):
            return UserIds(int(f[2]), int(f[3]), f[5] or "/")
    return None


def _find_group(rootfs: Root, name: str) -> int | None:
    for f in _entries(rootfs, "etc/group"):
        if len(f) >= 3 and f[0] == name and f[2].isdigit():
            return int(f[2])
    return None


def lookup_user(rootfs: Root, user: str) -> UserIds:
    """Resolve "name", "uid", "name:group" or "uid:gid" against the rootfs.

    An empty `user` means root. A numeric uid unknown to etc/passwd is accepted with gid = uid
    (or the given gid) and home "/", as runc would run it.
    """
    user = user or "root"
    name, _, group = user.partition(":")
    if name.isdigit():
        found = _find_passwd(rootfs, uid=int(name))
        ids = found or UserIds(int(name), int(name), "/")
    else:
        named = _find_passwd(rootfs, name=name)
        if named is None:
            raise InvalidRequestError(f"unable to find user {name}: no matching entries in passwd")
        ids = named
    if group:
        gid = int(group) if group.isdigit() else _find_group(rootfs, group)
        if gid is None:
            raise InvalidRequestError(f"unable to find group {group}: no matching entries in group")
        ids = ids._replace(gid=gid)
    return ids


def supplementary_gids(rootfs: Root, name: str, primary_gid: int) -> list[int]:
    """Gids of the groups in etc/group that list `name` as a member (without the primary)."""
    out: list[int] = []
    for f in _entries(rootfs, "etc/group"):
        if len(f) >= 4 and f[2].isdigit() and name in f[3].split(","):
            gid = int(f[2])
            if gid != primary_gid and gid not in out:
                out.append(gid)
    return out
