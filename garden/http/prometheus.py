"""Prometheus text exposition (format 0.0.4) of the server's own figures and every
container's: the request counters and latency histogram this module keeps, the event log's
counters, and per-container figures read from the kernel at scrape time."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import final

from garden.events.journal import JournalStats
from garden.events.state import ContainerState
from garden.linux.plan import ContainerStats

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@final
class RequestMetrics:
    """Requests by (method, route, status) and latency by (method, route)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], list[int]] = {}  # per-bucket counts, then +Inf
        self.latency_sum: dict[tuple[str, str], float] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        lkey = (method, route)
        buckets = self.latency.setdefault(lkey, [0] * (len(BUCKETS) + 1))
        buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum[lkey] = self.latency_sum.get(lkey, 0.0) + seconds


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str | int]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Mapping[str, str | int] = {}) -> None:
        text = repr(float(value)) if isinstance(value, float) else str(value)
        self.lines.append(f"{name}{_labels(labels)} {text}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(
    *,
    requests: RequestMetrics,
    journal: JournalStats,
    containers: Iterable[ContainerState],
    stats: Mapping[str, ContainerStats],
) -> str:
    w = _Writer()
    containers = list(containers)
    _server(w, requests, journal, containers)
    _containers(w, containers, stats)
    return w.text()


def _server(
    w: _Writer,
    requests: RequestMetrics,
    journal: JournalStats,
    containers: list[ContainerState],
) -> None:
    w.family("garden_containers", "gauge", "Containers the server holds, by phase.")
    phases = {"creating": 0, "active": 0, "stopped": 0, "destroying": 0}
    for c in containers:
        phases[c.phase] = phases.get(c.phase, 0) + 1
    for phase, n in phases.items():
        w.sample("garden_containers", n, {"phase": phase})
    w.family("garden_http_requests_total", "counter", "HTTP requests by route and status.")
    for (method, route, status), n in sorted(requests.counts.items()):
        w.sample(
            "garden_http_requests_total", n, {"method": method, "route": route, "status": status}
        )
    name = "garden_http_request_duration_seconds"
    w.family(name, "histogram", "Time to the response headers, by route.")
    for (method, route), buckets in sorted(requests.latency.items()):
        base = {"method": method, "route": route}
        total = 0
        for bound, n in zip((*BUCKETS, float("inf")), buckets, strict=True):
            total += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            w.sample(f"{name}_bucket", total, {**base, "le": le})
        w.sample(f"{name}_sum", requests.latency_sum[(method, route)], base)
        w.sample(f"{name}_count", total, base)
    for metric, value, help_text in (
        ("garden_event_log_records_total", journal.records, "Records appended since start."),
        ("garden_event_log_written_bytes_total", journal.bytes, "Bytes appended since start."),
        ("garden_event_log_fsyncs_total", journal.batches, "Group commits (one fsync each)."),
        ("garden_event_log_write_errors_total", journal.write_errors, "Failed appends."),
    ):
        w.family(metric, "counter", help_text)
        w.sample(metric, value)
    w.family("garden_event_log_last_seq", "gauge", "Sequence number of the last record.")
    w.sample("garden_event_log_last_seq", journal.last_seq)
    w.family("garden_event_log_size_bytes", "gauge", "Size of the event log file.")
    w.sample("garden_event_log_size_bytes", journal.size_bytes)


# (metric, type, help, section of ContainerStats, key in it, divisor to the metric's unit)
_PER_CONTAINER: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("garden_container_memory_usage_bytes", "gauge", "Memory in use.", "memory",
     "usage_in_bytes", 1),
    ("garden_container_memory_max_usage_bytes", "gauge", "Most memory ever used.", "memory",
     "max_usage_in_bytes", 1),
    ("garden_container_memory_rss_bytes", "gauge", "Anonymous memory.", "memory", "rss", 1),
    ("garden_container_memory_cache_bytes", "gauge", "Page cache.", "memory", "cache", 1),
    ("garden_container_memory_limit_bytes", "gauge", "Memory limit in force.", "memory",
     "limit_in_bytes", 1),
    ("garden_container_oom_kills_total", "counter", "Processes killed by the OOM killer.",
     "memory", "oom_kill", 1),
    ("garden_container_cpu_usage_seconds_total", "counter", "CPU time used.", "cpu", "usage",
     1e9),
    ("garden_container_cpu_user_seconds_total", "counter", "CPU time in user mode.", "cpu",
     "user", 1e9),
    ("garden_container_cpu_system_seconds_total", "counter", "CPU time in the kernel.", "cpu",
     "system", 1e9),
    ("garden_container_disk_bytes_used", "gauge", "Bytes written to the container's layer.",
     "disk", "bytes_used", 1),
    ("garden_container_disk_inodes_used", "gauge", "Inodes used in the container's layer.",
     "disk", "inodes_used", 1),
    ("garden_container_pids_current", "gauge", "Tasks in the container.", "pids", "current", 1),
    ("garden_container_pids_max", "gauge", "Task limit in force.", "pids", "max", 1),
    ("garden_container_pids_refused_total", "counter", "Forks refused by the task limit.",
     "pids", "max_reached", 1),
)  # fmt: skip


def _containers(
    w: _Writer, containers: list[ContainerState], stats: Mapping[str, ContainerStats]
) -> None:
    for metric, kind, help_text, section, key, scale in _PER_CONTAINER:
        rows = []
        for c in containers:
            s = stats.get(c.handle)
            values: dict[str, int] = getattr(s, section) if s is not None else {}
            if key in values:
                rows.append((c.handle, values[key]))
        if not rows:
            continue
        w.family(metric, kind, help_text)
        for handle, value in rows:
            w.sample(metric, value / scale if scale != 1 else value, {"handle": handle})
