"""The issue's targets, checked against one run's ratios (never against absolute numbers from
another run: two runs on this machine differ by up to 25%)."""

from __future__ import annotations

from bench.results import OURS, Results, Row, Target


def _median(row: Row | None, engine: str) -> float | None:
    if row is None or engine not in row.cells:
        return None
    return row.cells[engine].main


def _ratio_target(results: Results, key: str, other: str, limit: float, what: str) -> Target:
    row = results.row(key)
    ratio = row.ratio(other) if row else None
    if ratio is None:
        why = "not measured in this run"
        if row is not None:
            for name in (OURS, other):
                cell = row.cells.get(name)
                if cell is not None and cell.skipped:
                    why = f"{name}: {cell.skipped}"
                    break
        return Target(what=what, met=None, detail=why)
    higher = row is not None and row.better == "higher"
    met = ratio >= limit if higher else ratio <= limit
    return Target(what=what, met=met, detail=f"{ratio:.2f}x")


def check(results: Results, fleet_size: int) -> list[Target]:
    targets = [
        _ratio_target(results, "create_destroy_net", "docker", 0.25,
                      "create + destroy with network ≤ 0.25x Docker"),
        _ratio_target(results, "create_destroy_net", "podman", 0.3,
                      "create + destroy with network ≤ 0.3x Podman"),
    ]  # fmt: skip
    run_true = results.row("run_true")
    runtime = str(results.machine.get("garden runtime", "runc"))
    ours, theirs = _median(run_true, OURS), _median(run_true, runtime)
    if ours is not None and theirs is not None:
        gap = ours - theirs
        targets.append(
            Target(what=f"run `true` ≤ the runtime's own exec ({runtime}) + 5 ms", met=gap <= 5.0,
                   detail=f"{ours:.1f} ms vs {runtime} exec {theirs:.1f} ms: {gap:+.1f} ms")
        )  # fmt: skip
    else:
        targets.append(
            Target(what=f"run `true` ≤ {runtime} exec + 5 ms", met=None, detail="not measured")
        )
    targets.append(
        _ratio_target(results, "run_true", "docker", 0.4, "run `true` ≤ 0.4x Docker exec")
    )
    targets.append(
        _ratio_target(results, "stdout", "docker", 3.0, "256 MiB stdout ≥ 3x Docker exec")
    )
    concurrent = results.row("concurrent")
    cell = concurrent.cells.get(OURS) if concurrent else None
    if cell is not None and cell.main is not None:
        n = results.options.get("concurrent", "N")
        targets.append(
            Target(what=f"{n} processes running at once in one container", met=True,
                   detail=f"all {n} ran and exited in {cell.main:.1f} s")
        )  # fmt: skip
    running = _median(results.row("fleet_running"), OURS)
    if running is not None:
        what = "1,000 containers all running in ≤ 60 s"
        if fleet_size >= 1000:
            targets.append(Target(what=what, met=running <= 60, detail=f"{running:.1f} s"))
        else:
            projected = running / fleet_size * 1000
            detail = (f"measured {fleet_size} in {running:.1f} s (linear projection to 1000: "
                      f"{projected:.0f} s); run with --full")  # fmt: skip
            targets.append(Target(what=what, met=None, detail=detail))
    memory = results.row("fleet_memory")
    cell = memory.cells.get(OURS) if memory else None
    if cell is not None and cell.value is not None:
        beyond = cell.extra.get("beyond the inits MiB/container")
        if isinstance(beyond, float):
            targets.append(
                Target(what="≤ 2 MiB host memory per container beyond its own processes",
                       met=beyond <= 2.0,
                       detail=f"{beyond:.2f} MiB PSS (server growth + monitors); "
                       f"{cell.value:.2f} MiB with the init")
            )  # fmt: skip
    return targets
