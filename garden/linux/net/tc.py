"""Bandwidth limits with tc: a token bucket (tbf) on the host end of the container's veth
shapes what the container receives; what it sends arrives on that veth's ingress, where a u32
filter redirects it (mirred) to an ifb device whose own tbf shapes it. This kernel has no
`police` action, so ingress cannot be limited in place. The ifb is the only object that does
not go away with the container's namespace; it carries the container's address in its name.

tc runs as a binary in batch mode (one exec per change): limits change rarely, and its
command language is the documented interface.
"""

from __future__ import annotations

import shutil

import trio

from garden.linux.net.netlink import NetworkError
from garden.linux.plan import Bandwidth

TBF_LATENCY = "100ms"  # how long a packet may wait in the bucket's queue before it is dropped


def _tc() -> str:
    return shutil.which("tc") or "/usr/sbin/tc"


async def _batch(lines: list[str], what: str, *, force: bool = False) -> None:
    argv = [_tc(), *(["-force"] if force else []), "-batch", "-"]
    proc = await trio.run_process(
        argv,
        stdin=("\n".join(lines) + "\n").encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if proc.returncode != 0 and not force:
        raise NetworkError(what, proc.stderr.decode(errors="replace").strip())


def _tbf(dev: str, bw: Bandwidth) -> str:
    return (
        f"qdisc replace dev {dev} root tbf rate {bw.rate}bps burst {bw.burst} latency {TBF_LATENCY}"
    )


async def apply_limit(veth: str, ifb: str, bw: Bandwidth, *, fresh: bool) -> None:
    """Shape both directions of `veth` to `bw`. `fresh`: (re)install the ingress redirect as
    well; otherwise only the two buckets change."""
    if fresh:
        await _batch([f"qdisc del dev {veth} ingress"], "clear ingress", force=True)
        lines = [
            _tbf(veth, bw),
            f"qdisc add dev {veth} handle ffff: ingress",
            f"filter add dev {veth} parent ffff: protocol all prio 1 u32 match u32 0 0 "
            f"action mirred egress redirect dev {ifb}",
            _tbf(ifb, bw),
        ]
    else:
        lines = [_tbf(veth, bw), _tbf(ifb, bw)]
    await _batch(lines, f"limit bandwidth of {veth} to {bw.rate} B/s")


async def set_buckets(limits: list[tuple[str, str, Bandwidth]]) -> None:
    """Set the buckets of each (veth, ifb, limit) whose redirect is in place, in one tc run."""
    if limits:
        lines = [line for veth, ifb, bw in limits for line in (_tbf(veth, bw), _tbf(ifb, bw))]
        await _batch(lines, f"restore the bandwidth limits of {len(limits)} containers")


async def clear_limit(veth: str) -> None:
    """Remove both buckets and the redirect from `veth` (what is missing is skipped)."""
    await _batch(
        [f"qdisc del dev {veth} root", f"qdisc del dev {veth} ingress"],
        f"clear bandwidth limit of {veth}",
        force=True,
    )
