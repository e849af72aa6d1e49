"""`--disallow-privileged-containers`: a privileged create is a 403 that leaves nothing behind;
unprivileged containers, and privileged processes in them, work as before."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Server
from tests.integration.isolation.helpers import create, run, status_fields

pytestmark = pytest.mark.root


@pytest.fixture
def server_overrides() -> dict[str, object]:
    return {"disallow_privileged_containers": True}


async def test_disallowed_privileged_create_is_403_and_leaves_nothing(server: Server) -> None:
    r = await server.client.post("/containers", json={"handle": "nope", "privileged": True})
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["type"] == "PrivilegedContainersDisallowedError"
    assert body["handle"] == "nope"
    assert (await server.client.get("/containers")).json() == {"handles": []}
    assert (await server.client.get("/containers/nope/info")).status_code == 404
    # unprivileged containers are made as usual, and a privileged process in one runs as
    # that container's (unprivileged) root
    await create(server, "nope")
    ran = await run(server, "nope", "cat", "/proc/self/status", privileged=True, user=None)
    fields = status_fields(ran.text)
    assert fields["Uid"].split()[0] == "0"
    assert fields["CapBnd"] == "00000000a80425fb"
    assert fields["Seccomp"] == "2"
