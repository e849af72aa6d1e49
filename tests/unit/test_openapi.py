"""`GET /openapi.json`: a valid OpenAPI 3.1 document that names every route the app serves,
and whose every route is served, except those listed in NOT_YET_SERVED."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from openapi_spec_validator import validate
from quart_trio import QuartTrio

from garden.actors.supervisor import Supervisor
from garden.config import ServerConfig
from garden.events.journal import Journal
from garden.events.log import EventLog
from garden.events.state import ServerState
from garden.http.app import create_app
from garden.openapi import ROUTES, build, document_bytes
from tests.unit.fakes import FakeKernel, FakeNetworker, FakeProcesses

# Routes of API.md that other branches are building. When one lands on main, this test fails
# until it is removed from here: the list can only shrink.
NOT_YET_SERVED = {
    ("GET", "/containers/bulk_info"),
    ("GET", "/containers/{handle}/metrics"),
    ("GET", "/metrics"),
    *(
        (method, f"/containers/{{handle}}/limits/{kind}")
        for kind in ("memory", "cpu", "disk")
        for method in ("GET", "PUT")
    ),
}
IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[QuartTrio]:
    config = ServerConfig(state_dir=str(tmp_path), tag="gtest", handle_signals=False)
    log = EventLog.open(tmp_path / "events.log")
    sup = Supervisor(
        config,
        state=ServerState(),
        journal=Journal(log, lambda record: None),
        kernel=FakeKernel(),
        processes=FakeProcesses(),
        networker=FakeNetworker(),
    )
    yield create_app(sup)
    log.close()


def served(app: QuartTrio) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every rule of the app."""
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in set(rule.methods or ()) - IGNORED_METHODS:
            out.add((method, path))
    return out


def documented() -> set[tuple[str, str]]:
    doc = build()
    return {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = build()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_every_served_route_is_documented(app: QuartTrio) -> None:
    missing = served(app) - documented()
    assert not missing, f"served but not in garden/openapi.py ROUTES: {sorted(missing)}"


def test_every_documented_route_is_served(app: QuartTrio) -> None:
    absent = documented() - served(app) - NOT_YET_SERVED
    assert not absent, f"documented but not served (and not in NOT_YET_SERVED): {sorted(absent)}"


def test_the_allowance_only_holds_documented_routes_not_yet_served(app: QuartTrio) -> None:
    landed = NOT_YET_SERVED & served(app)
    assert not landed, f"served now: remove from NOT_YET_SERVED: {sorted(landed)}"
    unknown = NOT_YET_SERVED - documented()
    assert not unknown, f"not in the document: {sorted(unknown)}"


def test_operations_are_well_formed() -> None:
    doc = build()
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for path, ops in doc["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (path, op["operationId"])
            assert op["x-cli"].startswith(("garden ", "curl "))
            assert "500" in op["responses"]
    assert len(ROUTES) == len(ids)


async def test_the_app_serves_the_document(app: QuartTrio) -> None:
    r = await app.test_client().get("/openapi.json")
    assert r.status_code == 200
    assert r.content_type == "application/json"
    body = await r.get_data()
    assert body == document_bytes()
    assert msgspec.json.decode(body)["info"]["title"].startswith("Garden API")
