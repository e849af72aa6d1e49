"""The results of a run: one row per benchmark with a cell per engine, ratios ours/theirs, the
targets of the issue checked against them, and their JSON and Markdown forms."""

from __future__ import annotations

from typing import Literal

import msgspec

from bench.stats import Parts, Summary, summarise

OURS = "garden"
ENGINE_ORDER = ["garden", "runc", "crun", "docker", "podman"]


class Cell(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One engine's result in one row: a summary of samples, or a single value, or a reason."""

    summary: Summary | None = None
    parts: dict[str, Summary] = {}
    value: float | None = None
    extra: dict[str, float | str] = {}
    skipped: str = ""

    @property
    def main(self) -> float | None:
        if self.summary is not None:
            return self.summary.median
        return self.value


class Row(msgspec.Struct, kw_only=True, omit_defaults=True):
    key: str
    title: str
    unit: str
    better: Literal["lower", "higher"] = "lower"
    cells: dict[str, Cell] = {}
    note: str = ""

    def ratio(self, other: str) -> float | None:
        """ours / theirs of the main numbers (None if either is missing)."""
        ours, theirs = self.cells.get(OURS), self.cells.get(other)
        a = ours.main if ours else None
        b = theirs.main if theirs else None
        if a is None or b is None or b == 0:
            return None
        return a / b


class Target(msgspec.Struct, kw_only=True):
    what: str
    met: bool | None  # None: not measured in this run
    detail: str


class Results(msgspec.Struct, kw_only=True):
    started: str
    seconds: float = 0.0
    machine: dict[str, str] = {}
    options: dict[str, object] = {}
    engines: dict[str, str] = {}  # name -> version, or "unavailable: why"
    rows: list[Row] = []
    targets: list[Target] = []
    notes: list[str] = []

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)


def cell_from_samples(samples: list[Parts], key: str = "total") -> Cell:
    """A cell whose summary is of `key` and whose parts summarise every other key."""
    names = sorted({k for s in samples for k in s})
    parts = {n: summarise([s[n] for s in samples if n in s]) for n in names if n != key}
    return Cell(summary=summarise([s[key] for s in samples]), parts=parts)


def engines_in(results: Results) -> list[str]:
    seen = {name for row in results.rows for name in row.cells}
    return [e for e in ENGINE_ORDER if e in seen] + sorted(seen - set(ENGINE_ORDER))


def fmt_number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_cell(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    if cell.skipped:
        return "n/a"
    if cell.summary is not None:
        s = cell.summary
        return f"{fmt_number(s.median)} ({fmt_number(s.p90)})"
    if cell.value is not None:
        return fmt_number(cell.value)
    return "-"


def markdown_table(results: Results) -> str:
    engines = engines_in(results)
    others = [e for e in engines if e != OURS]
    head = ["benchmark", "unit", *engines, *[f"{OURS}/{e}" for e in others]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results.rows:
        arrow = " ↑" if row.better == "higher" else ""
        cells = [fmt_cell(row.cells.get(e)) for e in engines]
        ratios = []
        for e in others:
            r = row.ratio(e)
            ratios.append("-" if r is None else f"{r:.2f}x")
        lines.append("| " + " | ".join([row.title, row.unit + arrow, *cells, *ratios]) + " |")
    return "\n".join(lines)


def markdown(results: Results) -> str:
    out = [
        f"# garden-trio benchmarks, {results.started}",
        "",
        "Medians with p90 in brackets (single measurements without); ratios are ours/theirs "
        "of the medians. ↑: higher is better (a ratio above 1 is ours ahead); otherwise lower "
        "is better (a ratio below 1 is ours ahead). n/a: the engine has no such operation or "
        "could not run it (see the notes).",
        "",
        markdown_table(results),
        "",
        "## Targets",
        "",
    ]
    for t in results.targets:
        mark = "not measured" if t.met is None else ("met" if t.met else "**missed**")
        out.append(f"- {t.what}: {mark} — {t.detail}")
    out += ["", "## Engines", ""]
    out += [f"- {name}: {what}" for name, what in results.engines.items()]
    out += ["", "## Breakdown", ""]
    for row in results.rows:
        for engine, cell in row.cells.items():
            bits = [f"{k} {fmt_number(v.median)}" for k, v in cell.parts.items()]
            bits += [
                f"{k} {fmt_number(v) if isinstance(v, float) else v}" for k, v in cell.extra.items()
            ]
            if cell.skipped and (engine == OURS or cell.skipped.startswith("failed")):
                bits.append(f"not measured: {cell.skipped}")
            if bits:
                out.append(f"- {row.title}, {engine}: " + "; ".join(bits))
        if row.note:
            out.append(f"- {row.title}: {row.note}")
    out += ["", "## Machine and options", ""]
    out += [f"- {k}: {v}" for k, v in {**results.machine, **results.options}.items()]
    if results.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in results.notes]
    return "\n".join(out) + "\n"


def encode(results: Results) -> bytes:
    return msgspec.json.format(msgspec.json.encode(results), indent=2)
