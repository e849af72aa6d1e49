"""The process that drives runc or crun for the benchmarks: JSON requests on stdin, one thread
each, JSON answers (with the request's id) on stdout.

crun 1.8.1 refuses hybrid cgroup hosts whose cgroup2 mount holds controllers; with
`--hide-cgroup2-controllers` the worker, started by `unshare --mount --propagation private`,
bind-mounts an empty file over that `cgroup.controllers` in its own mount namespace first
(ANCHORS.md). Containers still land in the real v1 hierarchies; the host's view is untouched.
"""

from __future__ import annotations

import argparse
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from bench.direct import MS_BIND, DirectRuntime, mount

CGROUP2_CONTROLLERS = "/sys/fs/cgroup/unified/cgroup.controllers"


class Request(msgspec.Struct, frozen=True):
    id: int
    op: str
    args: dict[str, Any] = {}


def hide_cgroup2_controllers(work_dir: Path) -> None:
    empty = work_dir / "empty-cgroup.controllers"
    empty.write_bytes(b"")
    mount(str(empty), CGROUP2_CONTROLLERS, None, MS_BIND, None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.direct_worker")
    p.add_argument("--binary", required=True)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--work-dir", required=True, type=Path)
    p.add_argument("--lower", required=True, type=Path)
    p.add_argument("--cgroup-parent", required=True)
    p.add_argument("--uid-base", required=True, type=int)
    p.add_argument("--hide-cgroup2-controllers", action="store_true")
    args = p.parse_args(argv)
    runtime = DirectRuntime(
        binary=args.binary,
        root=args.root,
        work_dir=args.work_dir,
        lower=args.lower,
        cgroup_parent=args.cgroup_parent,
        uid_base=args.uid_base,
    )
    if args.hide_cgroup2_controllers and Path(CGROUP2_CONTROLLERS).exists():
        hide_cgroup2_controllers(args.work_dir)
    out = sys.stdout.buffer
    out_lock = threading.Lock()
    decoder = msgspec.json.Decoder(Request)
    encoder = msgspec.json.Encoder()

    def handle(request: Request) -> None:
        try:
            answer: dict[str, object] = {
                "id": request.id,
                "result": runtime.call(request.op, request.args),
            }
        except Exception as exc:  # reported to the caller, which raises it
            answer = {"id": request.id, "error": f"{type(exc).__name__}: {exc}",
                      "trace": traceback.format_exc()[-2000:]}  # fmt: skip
        line = encoder.encode(answer) + b"\n"
        with out_lock:
            out.write(line)
            out.flush()

    with ThreadPoolExecutor(max_workers=32) as pool:
        for line in sys.stdin.buffer:
            if line.strip():
                pool.submit(handle, decoder.decode(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
