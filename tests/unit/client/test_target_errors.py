"""Targets as written on the command line, and wire errors mapped back to their classes."""

from __future__ import annotations

import inspect

import pytest

from garden import errors as e
from garden.api import ErrorBody
from garden.client import AsyncClient, Client
from garden.client.errors import from_body, from_response
from garden.client.target import Target
from garden.http.errors import STATUS, body_of


@pytest.mark.parametrize(
    ("text", "url", "socket"),
    [
        ("http://127.0.0.1:7777", "http://127.0.0.1:7777", None),
        ("http://example:80/garden/", "http://example/garden", None),
        ("https://garden.internal", "https://garden.internal", None),
        ("https://h:8443", "https://h:8443", None),
        ("http://[::1]:7777", "http://[::1]:7777", None),
        ("unix:/run/garden.sock", "http://localhost", "/run/garden.sock"),
        ("unix:///run/garden.sock", "http://localhost", "/run/garden.sock"),
        ("/run/garden.sock", "http://localhost", "/run/garden.sock"),
    ],
)
def test_targets(text: str, url: str, socket: str | None) -> None:
    t = Target.parse(text)
    assert t.base_url == url
    assert t.socket_path == socket


@pytest.mark.parametrize(
    "text", ["127.0.0.1:7777", "ftp://x", "http://", "http://h:port", "http://h:0", "unix:rel"]
)
def test_bad_targets(text: str) -> None:
    with pytest.raises(ValueError, match="target"):
        Target.parse(text)


def test_target_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GARDEN_TARGET", raising=False)
    assert str(Target.parse()) == "http://127.0.0.1:7777"
    monkeypatch.setenv("GARDEN_TARGET", "unix:/x.sock")
    assert Target.parse().socket_path == "/x.sock"
    assert Target.parse("http://h:1").port == 1


@pytest.mark.parametrize("cls", sorted(STATUS, key=lambda c: c.__name__))
def test_every_server_error_maps_back_to_its_class(cls: type[e.GardenError]) -> None:
    exc = cls.__new__(cls)
    e.GardenError.__init__(exc, f"a {cls.__name__}", handle="h", process_id="p")
    back = from_body(body_of(exc), STATUS[cls])
    assert type(back) is cls
    assert (back.message, back.handle, back.process_id) == (exc.message, "h", "p")


def test_unknown_types_and_bodies() -> None:
    back = from_body(ErrorBody(type="BrandNewError", message="m"), 418)
    assert isinstance(back, e.UnexpectedResponseError)
    assert back.status == 418 and "BrandNewError" in back.message
    html = from_response(502, b"<html>Bad Gateway</html>")
    assert isinstance(html, e.UnexpectedResponseError) and html.status == 502
    assert "Bad Gateway" in html.message
    refused = from_response(401, b"<html>401 Authorization Required</html>")
    assert isinstance(refused, e.UnauthorizedError) and "token was refused" in refused.message
    # A kernel error travels as InternalError: the client sees that class.
    assert type(from_body(ErrorBody(type="InternalError", message="x"))) is e.InternalError


def test_both_clients_have_the_same_methods() -> None:
    def public(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(fn).parameters)
            for name, fn in vars(cls).items()
            if callable(fn) and not name.startswith("_")
        }

    sync, aio = public(Client), public(AsyncClient)
    sync.pop("clone")  # threads only
    sync.pop("close")
    aio.pop("aclose")
    assert sync == aio
