"""Registry credentials (`--registry-auth-file`): the Docker config.json `auths` forms, bad
files refused with what is wrong, a changed file read again; the client answering a basic
challenge with them and sending them with the token request of a bearer challenge; a refusal
that says whether the server had credentials. An in-memory registry (httpx.MockTransport)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import httpx
import pytest

from garden.errors import RegistryError
from garden.images.uri import ImageSource
from garden.linux.images.auth import AuthFileError, RegistryAuth, parse_auths
from garden.linux.images.registry import Registries, RegistryOptions


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auths_forms() -> None:
    data = json.dumps(
        {
            "auths": {
                "r.example:5000": {"auth": b64("alice:pa:ss")},
                "https://index.docker.io/v1/": {"username": "bob", "password": "x"},
                "http://Other.example/path": {"auth": b64("carol:y"), "email": "c@x"},
            },
            "credsStore": "ignored",
        }
    ).encode()
    assert parse_auths(data) == {
        "r.example:5000": ("alice", "pa:ss"),
        "registry-1.docker.io": ("bob", "x"),
        "other.example": ("carol", "y"),
    }


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ("not json", "not JSON"),
        ('{"credHelpers": {}}', 'no "auths"'),
        ('{"auths": {"r": "s"}}', "not an object"),
        ('{"auths": {"r": {"auth": "@@@"}}}', "not base64"),
        ('{"auths": {"r": {"auth": "' + b64("nocolon") + '"}}}', "not user:password"),
        ('{"auths": {"r": {"identitytoken": "t"}}}', "identitytoken"),
        ('{"auths": {"r": {}}}', "no auth"),
    ],
)
def test_bad_auth_files_are_refused(doc: str, says: str) -> None:
    with pytest.raises(AuthFileError, match=says):
        parse_auths(doc.encode(), "f.json")


def write_auths(path: Path, registry: str, user: str, password: str) -> None:
    path.write_text(json.dumps({"auths": {registry: {"auth": b64(f"{user}:{password}")}}}))


def test_a_changed_file_is_read_again_and_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    write_auths(path, "r:5000", "alice", "one")
    auth = RegistryAuth(str(path))
    assert auth.credentials("r:5000") == ("alice", "one")
    write_auths(path, "r:5000", "alice", "two-longer")
    assert auth.credentials("r:5000") == ("alice", "two-longer")
    path.write_text("broken")  # a file broken while running: the last good credentials
    os.utime(path, ns=(1, 1))
    assert auth.credentials("r:5000") == ("alice", "two-longer")
    assert "two" not in repr(auth) and "r:5000" in repr(auth)
    assert RegistryAuth().credentials("r:5000") is None
    with pytest.raises(AuthFileError, match="No such file"):
        RegistryAuth(str(tmp_path / "absent.json"))


MANIFEST = json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" + "0" * 64}}).encode()
SOURCE = ImageSource(kind="docker", registry="r:5000", name="app", tag="v1")


def answer(
    status: int, body: object = b"", headers: dict[str, str] | None = None
) -> httpx.Response:
    """A streamed answer, as a real transport gives (the client reads it with iter_raw)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(data))


def registries(tmp_path: Path, handler: httpx.MockTransport, creds: bool) -> Registries:
    auth = RegistryAuth()
    if creds:
        write_auths(tmp_path / "config.json", "r:5000", "alice", "secret")
        auth = RegistryAuth(str(tmp_path / "config.json"))
    return Registries(RegistryOptions(insecure=("r:5000",)), transport=handler, auth=auth)


def fetch_manifest(r: Registries) -> bytes:
    ref = r.reference(SOURCE)
    with r._get(ref, "/v2/app/manifests/v1", "test") as answer:
        return answer.read()


def test_basic_challenge_is_answered_with_the_credentials(tmp_path: Path) -> None:
    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Basic " + b64("alice:secret"):
            return answer(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                {"WWW-Authenticate": 'Basic realm="Registry Realm"'},
            )
        return answer(200, MANIFEST)

    r = registries(tmp_path, httpx.MockTransport(handle), creds=True)
    assert fetch_manifest(r) == MANIFEST
    assert fetch_manifest(r) == MANIFEST  # sent at once the second time
    assert seen == [None, "Basic " + b64("alice:secret"), "Basic " + b64("alice:secret")]

    seen.clear()
    r = registries(tmp_path, httpx.MockTransport(handle), creds=False)
    with pytest.raises(RegistryError, match=r"401.*UNAUTHORIZED.*no credentials for r:5000"):
        fetch_manifest(r)
    assert seen == [None]


def test_token_request_carries_the_credentials(tmp_path: Path) -> None:
    token_requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            token_requests.append(request)
            if request.headers.get("Authorization") != "Basic " + b64("alice:secret"):
                return answer(401, {"errors": [{"code": "DENIED"}]})
            return answer(200, {"token": "tok-1"})
        if request.headers.get("Authorization") != "Bearer tok-1":
            challenge = 'Bearer realm="http://auth:1/token",service="r"'
            return answer(401, headers={"WWW-Authenticate": challenge})
        return answer(200, MANIFEST)

    r = registries(tmp_path, httpx.MockTransport(handle), creds=True)
    assert fetch_manifest(r) == MANIFEST
    [token] = token_requests
    assert token.url.params["scope"] == "repository:app:pull"
    assert token.url.params["service"] == "r"

    r = registries(tmp_path, httpx.MockTransport(handle), creds=False)
    with pytest.raises(RegistryError, match=r"token 401.*DENIED.*no credentials for r:5000"):
        fetch_manifest(r)
