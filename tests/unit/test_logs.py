"""Server logs: `--log-format json` lines, and one request line with the handle."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from garden.cli import main
from garden.logs import JsonFormatter, split_message
from tests.unit.servers import Real


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("garden.x", logging.WARNING, __file__, 1, message, args, None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_split_message() -> None:
    assert split_message("create-finished handle=h pid=3") == (
        "create-finished",
        {"handle": "h", "pid": "3"},
    )
    assert split_message("serving") == ("serving", {})
    assert split_message("Running on http://x (CTRL + C to quit)") == (
        "Running on http://x (CTRL + C to quit)",
        {},
    )


def test_json_lines() -> None:
    f = JsonFormatter()
    line = json.loads(f.format(record("init-exited handle=%s pid=%d", "web", 7)))
    assert line["event"] == "init-exited" and line["handle"] == "web" and line["pid"] == "7"
    assert line["level"] == "warning" and line["logger"] == "garden.x"
    assert line["time"].endswith("Z")
    typed = json.loads(f.format(record("request method=GET", fields={"status": 404, "ms": 1.5})))
    assert typed["event"] == "request" and typed["status"] == 404 and typed["ms"] == 1.5
    r = record("failed")
    try:
        int("boom")
    except ValueError:
        r.exc_info = sys.exc_info()
    assert "ValueError: invalid literal" in json.loads(f.format(r))["exception"]


async def test_one_request_line_with_the_handle(
    real: Real, caplog: pytest.LogCaptureFixture
) -> None:
    import httpx

    caplog.set_level(logging.INFO, logger="garden.http")
    async with httpx.AsyncClient(base_url=real.url) as c:
        await c.post("/containers", json={"handle": "logged"})
        await c.get("/containers/logged/info", headers={"X-Request-Id": "abc-1"})
        await c.get("/containers/nope/info")
    lines = [r for r in caplog.records if r.getMessage().startswith("request ")]
    fields = [r.fields for r in lines]  # type: ignore[attr-defined]
    assert fields[0]["route"] == "/containers" and fields[0]["handle"] == "logged"
    assert fields[1]["route"] == "/containers/<handle>/info"
    assert fields[1]["request_id"] == "abc-1" and fields[1]["status"] == 200
    assert fields[2]["handle"] == "nope" and fields[2]["status"] == 404
    assert "handle=logged" in lines[1].getMessage()


def test_log_format_flag(tmp_path: Path) -> None:
    from garden.cli import build_parser
    from garden.cli.server import config_from_args

    args = build_parser("server").parse_args(
        ["server", "--state-dir", str(tmp_path), "--log-format", "json"]
    )
    assert config_from_args(args).log_format == "json"
    with pytest.raises(SystemExit):
        main(["server", "--log-format", "xml"])
