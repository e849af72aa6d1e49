"""The documentation keeps up with the code: every route of the OpenAPI table appears in
docs/api.md, every client command in docs/cli.md, every server flag in docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from garden.cli import COMMANDS, build_parser
from garden.openapi import ROUTES, Route

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_api_md_shows_every_path(route: Route) -> None:
    pattern = re.escape(route.path)
    pattern = re.sub(r"\\{\w+\\}", r"[^/\\s?\"'`]+", pattern)
    assert re.search(pattern + r"(?![\w/])", (DOCS / "api.md").read_text()), route.path


def test_cli_md_shows_every_command() -> None:
    text = (DOCS / "cli.md").read_text()
    for name in COMMANDS:
        assert f"garden {name}" in text, name


def test_operations_md_explains_every_server_flag() -> None:
    text = (DOCS / "operations.md").read_text()
    parser = build_parser("server")
    server = next(a for a in parser._actions if a.dest == "subcommand").choices["server"]  # type: ignore[union-attr]
    for action in server._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in text, flag
