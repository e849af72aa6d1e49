"""Crash points for the crash-test harness: `GARDEN_CRASH_AT=<point>[,<point>...]` makes the
server SIGKILL itself the first time it reaches a named point (`<point>#<n>`: the n-th time).

Points are placed where a real crash would hurt most: right after a record is durable but
before anyone is answered (`record:<EventType>`), and between the kernel steps of a create or a
destroy (`create:<step>`, `destroy:<step>`), of a network change (`net:<step>`), of a limit
change (`limits:after-cgroup`, `limits:after-disk`: the kernel changed, nothing recorded), of a
file transfer (`files:in-mid-stream`, `files:before-publish`, `files:after-link`,
`files:out-mid-stream`), and of the deferred deletion of a destroyed bundle
(`destroy:after-trash`: renamed into the trash, not yet recorded; `trash:before-delete`: the
destroy answered, the bundle not yet deleted). Without the variable every call is a dict lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _parse(value: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in value.split(","))):
        name, _, nth = item.partition("#")
        points[name] = int(nth) if nth else 1
    return points


_points = _parse(os.environ.get("GARDEN_CRASH_AT", ""))


def reached(point: str) -> None:
    """SIGKILL this process if `point` is armed and reached for the armed time."""
    if not _points or point not in _points:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == _points[point]:
        os.kill(os.getpid(), signal.SIGKILL)
