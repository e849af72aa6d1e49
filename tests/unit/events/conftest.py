"""Helpers shared by the event log and journal tests."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from garden.events.log import EventLog
from garden.events.schema import Origin, PropertySet, Record


def prop(i: int) -> PropertySet:
    return PropertySet(handle=f"h{i % 7}", key=f"k{i}", value="v" * (i % 5))


def line(record: Record | dict[str, object]) -> bytes:
    """A log line built by hand, for writing records the EventLog would refuse to."""
    body = msgspec.json.encode(record)
    return b"%08x %s\n" % (zlib.crc32(body), body)


def fill(path: Path, count: int, *, per_batch: int = 3) -> list[Record]:
    """A closed log at `path` holding `count` PropertySet records."""
    log = EventLog.open(path)
    out: list[Record] = []
    try:
        for start in range(0, count, per_batch):
            batch = [(prop(i), Origin()) for i in range(start, min(count, start + per_batch))]
            out += log.append(batch, now=1000.0 + start)
    finally:
        log.close()
    return out


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "events.log"


@pytest.fixture
def opened(log_path: Path) -> Iterator[EventLog]:
    log = EventLog.open(log_path)
    yield log
    log.close()
