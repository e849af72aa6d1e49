"""Log output of `garden server`: `--log-format text` (one `key=value` line per event) or
`json` (one JSON object per line, for log shippers).

Log calls across the code read `log.info("create-finished handle=%s pid=%d", ...)`: the first
word names the event, `key=value` pairs follow. The JSON formatter turns such a message into
`{"time", "level", "logger", "event", key: value, ...}`; a call that passes
`extra={"fields": {...}}` (the request line of `garden/http/app.py`) gives its fields typed.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_PAIR = re.compile(r"(\w+)=(\S*)")


def split_message(message: str) -> tuple[str, dict[str, Any]]:
    """`"create-finished handle=h pid=3"` → `("create-finished", {"handle": "h", "pid": "3"})`.
    A message that is not in that form is kept whole as the event."""
    event, _, rest = message.partition(" ")
    if "=" in event:
        return "", dict(_PAIR.findall(message))
    fields = dict(_PAIR.findall(rest))
    if rest and not fields:
        return message, {}
    return event, fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out["event"] = message.partition(" ")[0]
            out.update(fields)
        else:
            event, parsed = split_message(message)
            out["event"] = event
            out.update(parsed)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure(level: str, fmt: LogFormat) -> None:
    """Log to stderr at `level` in `fmt`, replacing any handlers set before."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
