"""The random-kill soak: a real `garden server` under a mixed workload (creates, properties,
processes, destroys) is SIGKILLed at random moments, at a random crash point
(GARDEN_CRASH_AT, garden/faults.py) or after a random time, and started again, many times.

After every restart it checks that no acknowledged change is lost (every create, destroy and
property the client got a success for is in the state; an unanswered one may have gone either
way), that no exit status is lost (a process whose start was acknowledged reports the status
it exits with), that a container runs a process after each restart, that the kernel holds the
containers (runtime state, cgroups, mounts, bundles, host veths), and at the end that nothing
of the server's tag is left. `python -m tests.soak.soak --cycles 1000` (as root); results go
to stdout and, one JSON line per cycle, to `--record`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from garden.linux.cgroups import detect
from garden.linux.net import names
from garden.linux.rootfs import mounts_under
from tests.integration.conftest import ServerProcess, force_cleanup, leftovers, our_links

TIMEOUT = httpx.Timeout(20)
MAX_LIVE = 8
# Where a crash hurts: records made durable but unanswered, and steps of kernel work.
POINTS = [
    "record:ContainerCreateStarted",
    "record:ContainerCreated",
    "record:PropertySet",
    "record:ProcessSpawning",
    "record:ProcessStarted",
    "record:ProcessExited",
    "record:ContainerDestroyStarted",
    "record:ContainerDestroyed",
    "create:after-overlay",
    "create:after-runtime",
    "create:after-network",
    "process:after-spawn",
    "destroy:after-runtime",
    "destroy:after-unmount",
    "destroy:after-trash",
    "trash:before-delete",
]


class Broken(AssertionError):
    """An invariant does not hold after a restart."""


@dataclass
class Model:
    """What the client knows for sure, and what it asked for without an answer."""

    live: dict[str, dict[str, str]] = field(default_factory=dict)  # handle → acked properties
    unsure: set[str] = field(default_factory=set)  # handles whose create/destroy was unanswered
    unsure_props: dict[tuple[str, str], set[str | None]] = field(default_factory=dict)
    exits: dict[tuple[str, str], int] = field(
        default_factory=dict
    )  # started → status it exits with
    unsure_procs: dict[tuple[str, str], int] = field(default_factory=dict)
    counter: int = 0

    def next(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"


class Workload:
    def __init__(self, client: httpx.Client, model: Model, rng: random.Random) -> None:
        self.c = client
        self.m = model
        self.rng = rng
        self.acked = 0

    def step(self) -> None:
        live = sorted(self.m.live)
        ops = ["create"] * (3 if len(live) < MAX_LIVE else 0)
        if live:
            ops += ["property"] * 3 + ["process"] * 3 + ["destroy"] * (2 if len(live) > 2 else 1)
        getattr(self, ops[self.rng.randrange(len(ops))])(live)

    def create(self, live: list[str]) -> None:
        handle = self.m.next("s")
        self.m.unsure.add(handle)
        r = self.c.post("/containers", json={"handle": handle, "properties": {"born": handle}})
        self.m.unsure.discard(handle)
        if r.status_code != 200:
            raise Broken(f"create {handle}: {r.status_code} {r.text}")
        self.m.live[handle] = {"born": handle}
        self.acked += 1

    def property(self, live: list[str]) -> None:
        handle = self.rng.choice(live)
        key, value = f"k{self.rng.randrange(3)}", self.m.next("v")
        before = self.m.live[handle].get(key)
        self.m.unsure_props[(handle, key)] = {before, value}
        r = self.c.put(f"/containers/{handle}/properties/{key}", json={"value": value})
        del self.m.unsure_props[(handle, key)]
        if r.status_code != 200:
            raise Broken(f"property {handle}/{key}: {r.status_code} {r.text}")
        self.m.live[handle][key] = value
        self.acked += 1

    def process(self, live: list[str]) -> None:
        handle = self.rng.choice(live)
        pid, status = self.m.next("p"), self.rng.randrange(256)
        script = f"exit {status}" if self.rng.random() < 0.7 else f"sleep 0.3; exit {status}"
        spec = {"id": pid, "path": "sh", "args": ["-c", script]}
        self.m.unsure_procs[(handle, pid)] = status
        with self.c.stream("POST", f"/containers/{handle}/processes", json=spec) as r:
            if r.status_code != 200:
                raise Broken(f"run {handle}/{pid}: {r.status_code} {r.read()!r}")
            lines = r.iter_lines()
            next(line for line in lines if line)  # the start is acknowledged
            del self.m.unsure_procs[(handle, pid)]
            self.m.exits[(handle, pid)] = status
            self.acked += 1
            last = [json.loads(line) for line in lines if line][-1]
        if last.get("exit_status") != status:
            raise Broken(f"{handle}/{pid} exited {last} instead of {status}")

    def destroy(self, live: list[str]) -> None:
        handle = self.rng.choice(live)
        self.m.unsure.add(handle)
        r = self.c.delete(f"/containers/{handle}")
        self.m.unsure.discard(handle)
        if r.status_code != 200:
            raise Broken(f"destroy {handle}: {r.status_code} {r.text}")
        del self.m.live[handle]
        self.m.exits = {k: v for k, v in self.m.exits.items() if k[0] != handle}
        self.acked += 1


def check(sp: ServerProcess, c: httpx.Client, m: Model) -> None:
    """Every invariant after a restart; then `m` is what the server holds."""
    listed = set(c.get("/containers").json()["handles"])
    lost = set(m.live) - listed - m.unsure
    if lost:
        raise Broken(f"acknowledged containers lost: {sorted(lost)}")
    unknown = listed - set(m.live) - m.unsure
    if unknown:
        raise Broken(f"containers nobody created: {sorted(unknown)}")
    for handle in m.unsure:  # settle what was unanswered: the server's word now
        if handle in listed:
            m.live.setdefault(handle, {"born": handle})
        else:
            m.live.pop(handle, None)
    m.unsure.clear()
    ids: set[str] = set()
    veths: set[str] = set()
    for handle in sorted(listed):
        info = c.get(f"/containers/{handle}/info").json()
        ids.add(Path(info["container_path"]).name)
        if info.get("container_ip"):
            veths.add(names.link_name(sp.tag, names.HOST_VETH, info["container_ip"]))
        props = info["properties"]
        for key, value in m.live[handle].items():
            if props.get(key) != value and (handle, key) not in m.unsure_props:
                raise Broken(f"{handle}: property {key}={value!r} lost ({props.get(key)!r})")
        for (h, key), allowed in m.unsure_props.items():
            if h == handle and props.get(key) not in allowed:
                raise Broken(f"{handle}: property {key}={props.get(key)!r} not in {allowed}")
        m.live[handle] = {k: v for k, v in props.items()}
        if info["state"] != "active":
            raise Broken(f"{handle} is {info['state']}: nothing here stops containers")
    m.unsure_props.clear()
    _check_exits(c, m, listed)
    _check_kernel(sp, ids, veths)


def _check_exits(c: httpx.Client, m: Model, listed: set[str]) -> None:
    unsure = {k: v for k, v in m.unsure_procs.items() if k[0] in listed}
    m.unsure_procs.clear()
    for (handle, pid), status in [*m.exits.items(), *unsure.items()]:
        if handle not in listed:
            continue
        with c.stream("GET", f"/containers/{handle}/processes/{pid}") as r:
            if r.status_code == 404 and (handle, pid) in unsure:
                continue  # its start was never acknowledged, and it did not happen
            if r.status_code != 200:
                raise Broken(f"{handle}/{pid}: {r.status_code} {r.read()!r}")
            last = [json.loads(line) for line in r.iter_lines() if line][-1]
        if last.get("exit_status") != status:
            raise Broken(f"{handle}/{pid}: exit status {status} lost: {last}")
        m.exits[(handle, pid)] = status
    m.exits = {k: v for k, v in m.exits.items() if k[0] in listed}


def _check_kernel(sp: ServerProcess, ids: set[str], veths: set[str]) -> None:
    state = sp.state_dir
    runtime = state / "runtime"
    found = {
        "runtime": {d.name for d in runtime.iterdir() if d.is_dir()} if runtime.exists() else set(),
        "cgroups": {Path(p).name for p in detect().children(sp.config.cgroup_parent)},
        "bundles": {d.name for d in (state / "containers").iterdir()}
        if (state / "containers").exists()
        else set(),
        "mounts": {
            str(p.relative_to(state / "containers")).split("/")[0]
            for p in mounts_under(state / "containers")
        },
    }
    for kind, have in found.items():
        if have != ids:
            raise Broken(f"kernel {kind} {sorted(have)} != containers {sorted(ids)}")
    deadline = time.monotonic() + 5
    while True:  # a dead namespace's veth goes a moment after its last process
        links = {n for n in our_links(sp.tag) if names.HOST_VETH in n[len(sp.tag) :][:1]}
        if links == veths or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if links != veths:
        raise Broken(f"host veths {sorted(links)} != containers' {sorted(veths)}")


@dataclass
class Cycle:
    n: int
    how: str
    acked: int
    start_s: float
    check_s: float


def run_cycle(sp: ServerProcess, m: Model, rng: random.Random, n: int) -> Cycle:
    point = ""
    if rng.random() < 0.6:
        point = f"{rng.choice(POINTS)}#{rng.randint(1, 3)}"
    delay = rng.uniform(0.05, 2.0) if not point else 6.0
    t0 = time.monotonic()
    try:
        sp.start(crash_at=point)
    except AssertionError:
        # The armed point is also on the path of recovery (finishing an interrupted destroy,
        # undoing a create): a crash while recovering, which the next start must survive.
        if sp.proc is None or sp.proc.wait(timeout=60) != -signal.SIGKILL:
            raise
        return Cycle(n, f"{point} during recovery", 0, time.monotonic() - t0, 0.0)
    start_s = time.monotonic() - t0
    t0 = time.monotonic()
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        check(sp, c, m)
    check_s = time.monotonic() - t0
    assert sp.proc is not None
    proc = sp.proc
    fired = threading.Event()

    def kill() -> None:
        if proc.poll() is None:
            fired.set()
            proc.send_signal(signal.SIGKILL)

    timer = threading.Timer(delay, kill)
    timer.start()
    workload = Workload(httpx.Client(base_url=sp.url, timeout=TIMEOUT), m, rng)
    try:
        # Usable: the first thing after a restart is a process in a container (its exit
        # status is checked; it may meet an armed crash point like any other step).
        if m.live:
            workload.process(sorted(m.live))
        while proc.poll() is None:
            workload.step()
    except httpx.TransportError:
        pass
    finally:
        workload.c.close()
        timer.cancel()
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    if proc.wait(timeout=60) != -signal.SIGKILL:
        raise Broken(f"the server ended with {proc.returncode}, not by our SIGKILL")
    how = f"timer {delay:.2f}s" if fired.is_set() else point
    return Cycle(n, how, workload.acked, start_s, check_s)


def _finish(sp: ServerProcess, m: Model) -> None:
    """A last start and check, destroy everything, stop: nothing of the tag may be left."""
    sp.start()
    with httpx.Client(base_url=sp.url, timeout=TIMEOUT) as c:
        check(sp, c, m)
        for handle in c.get("/containers").json()["handles"]:
            if c.delete(f"/containers/{handle}").status_code != 200:
                raise Broken(f"destroy {handle} at the end")
    sp.kill(signal.SIGTERM)
    left = leftovers(sp.config)
    if left:
        raise Broken(f"leaked: {left}")


def soak(state_dir: Path, cycles: int, seed: int, record: Path | None = None) -> list[Cycle]:
    rng = random.Random(seed)
    sp = ServerProcess(state_dir, "k" + os.urandom(3).hex())
    # A start on a machine this loaded takes seconds; a hung one is still caught.
    sp.start_timeout = 60.0
    m = Model()
    done: list[Cycle] = []
    n = 0
    try:
        for n in range(1, cycles + 1):
            cycle = run_cycle(sp, m, rng, n)
            done.append(cycle)
            if record is not None:
                with open(record, "a") as f:
                    f.write(json.dumps(cycle.__dict__) + "\n")
        _finish(sp, m)
    except Broken as e:
        raise Broken(f"cycle {n} of seed {seed} ({sp.log}): {e}") from e
    finally:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.kill()
        trio.run(force_cleanup, sp.config)
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--state-dir", default="")
    parser.add_argument("--record", default="")
    args = parser.parse_args()
    base = Path(args.state_dir or f"/var/tmp/garden-tests/soak-{os.urandom(3).hex()}")
    base.mkdir(parents=True, mode=0o711, exist_ok=True)
    started = time.monotonic()
    print(f"soak: {args.cycles} cycles, seed {args.seed}, state in {base}", flush=True)
    try:
        done = soak(
            base / "state", args.cycles, args.seed, Path(args.record) if args.record else None
        )
    except Broken as e:
        print(f"BROKEN: {e}", flush=True)
        return 1
    points = sum(1 for c in done if not c.how.startswith("timer"))
    print(
        json.dumps(
            {
                "cycles": len(done),
                "killed_at_crash_point": points,
                "killed_by_timer": len(done) - points,
                "acknowledged_changes": sum(c.acked for c in done),
                "seconds": round(time.monotonic() - started, 1),
                "leaked": [],
                "broken": 0,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
