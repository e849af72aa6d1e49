"""What a server's kernel resources and files still exist: the leak check of tests and `just load`.

After every container of a server is destroyed, `leftovers()` must be empty: no link (veth,
bridge, ifb; a link's tc qdiscs go with it) carrying the server's tag, no per-container state in
its nftables table, no cgroup below its cgroup parent, no mount, loop device or process monitor
(conmon, garden-monitor) of its state dir, no bundle, runtime state dir, trash entry or
half-unpacked image in it. Each finding is one line saying what and where. Every function here
blocks (netlink, /proc, `nft`): from trio, call `leftovers` in a worker thread.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import subprocess
import time
from pathlib import Path

from garden.linux import loop
from garden.linux.cgroups import detect
from garden.linux.net.netlink import list_links
from garden.linux.rootfs import mounts_under


def nft_leftovers(tag: str, pool: str) -> list[str]:
    """Per-container state in our nftables table: map elements, chains of holes, subnets
    other than the pool."""
    proc = subprocess.run(
        ["nft", "-j", "list", "table", "ip", tag], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return []  # no table: nothing of ours
    found: list[str] = []
    for item in json.loads(proc.stdout)["nftables"]:
        if "chain" in item and item["chain"]["name"].startswith("out_"):
            found.append(f"nft chain {item['chain']['name']}")
        for kind in ("map", "set"):
            if kind not in item:
                continue
            obj = item[kind]
            elems = obj.get("elem", [])
            if obj["name"] == "subnets":
                elems = [e for e in elems if e != _prefix(pool)]
            if obj["name"] != "deny" and elems:
                found.append(f"nft {kind} {obj['name']}: {elems}")
    return found


def _prefix(cidr: str) -> dict[str, object]:
    net = ipaddress.IPv4Network(cidr)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def monitors_of(state_dir: Path) -> list[int]:
    """Pids of the monitors whose process dir lies in `state_dir`: conmon's bundle (`-b`),
    garden-monitor's first argument."""
    prefix = os.path.realpath(state_dir).rstrip("/") + "/"
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        name = os.path.basename(argv[0]) if argv else b""
        if name == b"garden-monitor" and len(argv) > 1:
            if os.fsdecode(argv[1]).startswith(prefix):
                pids.append(int(entry.name))
            continue
        if name != b"conmon":
            continue
        for flag, value in itertools.pairwise(argv):
            if flag == b"-b" and os.fsdecode(value).startswith(prefix):
                pids.append(int(entry.name))
    return pids


def _entries(directory: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(directory))
    except FileNotFoundError:
        return []


def leftovers(
    *, tag: str, state_dir: Path, network_pool: str, cgroup_parent: str, settle: float = 5.0
) -> list[str]:
    """Every kernel resource and file of this server that still exists. Some go away on their
    own a little after a destroy answered: a veth with its network namespace once the last
    process died, a bundle when the trash task has deleted it. Those get up to `settle`
    seconds (there is nothing to await from outside the server)."""
    deadline = time.monotonic() + settle
    trash = state_dir / "trash"
    while (list_links(tag) or _entries(trash)) and time.monotonic() < deadline:
        time.sleep(0.02)
    found = [f"link {n}" for n in list_links(tag)]
    found += nft_leftovers(tag, network_pool)
    found += [f"cgroup {c}" for c in detect().children(cgroup_parent)]
    own = Path(os.path.realpath(state_dir))  # the state dir may be a mount of its own
    found += [f"mount {m}" for m in mounts_under(state_dir) if m != own]
    found += [f"loop {dev} {file}" for dev, file in loop.backed_under(state_dir).items()]
    found += [f"monitor pid {pid}" for pid in monitors_of(state_dir)]
    found += [f"dir containers/{d}" for d in _entries(state_dir / "containers")]
    runtime_root = state_dir / "runtime"
    found += [f"runtime {d}" for d in _entries(runtime_root) if (runtime_root / d).is_dir()]
    found += [f"trash {d}" for d in _entries(trash)]
    found += [f"limits-changing {d}" for d in _entries(state_dir / "limits-changing")]
    images = state_dir / "images"
    found += [f"image temp {p}" for p in images.glob("**/.tmp-*")] if images.exists() else []
    found += [f"image trash {d}" for d in _entries(images / "trash")]
    return found
