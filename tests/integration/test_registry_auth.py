"""Pulls from a registry that demands a login (Debian's `docker-registry` with htpasswd basic
auth on loopback) with the server's `--registry-auth-file` (Docker's config.json `auths`):
creates succeed with the right credentials, and the file is read again when it changes, so a
wrong password, or none for that registry, is a 502 that says which."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server
from tests.integration.test_images import create, sh
from tests.integration.test_registry import TIMEOUT, push_sample
from tests.registry import Registry, running_registry

pytestmark = pytest.mark.root

LOGIN = ("garden", "s3cret:with-colon")


def write_auths(path: Path, auths: dict[str, tuple[str, str]]) -> None:
    entries = {
        host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        for host, (user, password) in auths.items()
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"auths": entries}))
    tmp.rename(path)  # a new inode: seen as changed whatever the clock's resolution


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    (tmp_path / "registry").mkdir()
    with running_registry(tmp_path / "registry", login=LOGIN) as reg:
        yield reg


@pytest.fixture
def auth_file(tmp_path: Path, registry: Registry) -> Path:
    path = tmp_path / "config.json"
    write_auths(path, {f"http://{registry.host}/v2/": LOGIN})
    return path


@pytest.fixture
def server_overrides(registry: Registry, auth_file: Path) -> dict[str, object]:
    return {
        "insecure_docker_registries": (registry.host,),
        "registry_timeout": TIMEOUT,
        "registry_auth_file": str(auth_file),
    }


async def test_pulls_with_the_servers_credentials(
    server: Server, registry: Registry, auth_file: Path, tmp_path: Path
) -> None:
    await push_sample(registry, tmp_path, "team/app")
    await registry.push(tmp_path / "layout-plain", "v1", "team/app", "v2")
    await registry.push(tmp_path / "layout-plain", "v1", "team/app", "v3")
    handle = await create(server, rootfs=f"docker://{registry.host}/team/app#v1")
    assert await sh(server, handle, "cat /data/new") == (0, "new\n")
    # the registry did refuse anonymous requests
    assert '"GET /v2/team/app/manifests/v1 HTTP/1.1" 401' in registry.log.read_text()

    c = server.client
    write_auths(auth_file, {registry.host: (LOGIN[0], "wrong")})
    r = await c.post("/containers", json={"rootfs": f"docker://{registry.host}/team/app#v2"})
    assert (r.status_code, r.json()["type"]) == (502, "RegistryError"), r.text
    message = r.json()["message"]
    assert "401" in message and f"with the credentials for {registry.host}" in message
    assert "wrong" not in message

    write_auths(auth_file, {"other.example:5000": LOGIN})
    r = await c.post("/containers", json={"rootfs": f"docker://{registry.host}/team/app#v2"})
    assert (r.status_code, r.json()["type"]) == (502, "RegistryError"), r.text
    assert f"no credentials for {registry.host} in --registry-auth-file" in r.json()["message"]

    write_auths(auth_file, {registry.host: LOGIN})
    again = await create(server, rootfs=f"docker://{registry.host}/team/app:v3")
    assert await sh(server, again, "cat /data/new") == (0, "new\n")
