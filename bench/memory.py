"""Host memory of processes, from /proc: PSS (shared pages split between the processes that
map them, so sums are real memory) and RSS, and finding processes by name, cmdline or cgroup."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import msgspec


class Memory(msgspec.Struct, frozen=True, kw_only=True):
    pss_kib: int = 0
    rss_kib: int = 0
    processes: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(
            pss_kib=self.pss_kib + other.pss_kib,
            rss_kib=self.rss_kib + other.rss_kib,
            processes=self.processes + other.processes,
        )

    def minus(self, before: Memory) -> Memory:
        return Memory(
            pss_kib=self.pss_kib - before.pss_kib,
            rss_kib=self.rss_kib - before.rss_kib,
            processes=self.processes - before.processes,
        )


def of_pid(pid: int) -> Memory:
    """PSS and RSS of one process (zero if it is gone)."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith(b"Rss:"):
                    rss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return Memory()
    return Memory(pss_kib=pss, rss_kib=rss, processes=1)


def of_pids(pids: Iterable[int]) -> Memory:
    total = Memory()
    for pid in set(pids):
        total = total + of_pid(pid)
    return total


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pids_named(name: str) -> list[int]:
    """Processes whose comm (first 15 characters of the name) starts with `name`."""
    return [pid for pid in all_pids() if comm(pid).startswith(name[:15])]


def pids_in_cgroups(root: Path) -> list[int]:
    """Every pid in `root` (a cgroup directory of one hierarchy) and the cgroups below it."""
    found: list[int] = []
    for dirpath, _dirs, files in os.walk(root):
        if "cgroup.procs" in files:
            try:
                text = Path(dirpath, "cgroup.procs").read_text()
            except OSError:
                continue
            found += [int(p) for p in text.split()]
    return found
