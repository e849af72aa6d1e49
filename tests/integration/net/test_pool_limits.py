"""A pool that runs out: creates answer 503, `max_containers` in capacity follows the pool
and `--max-containers`, and destroyed containers give their subnets back."""

from __future__ import annotations

import ipaddress

import pytest

from tests.integration.conftest import Server, random_pool
from tests.integration.net.helpers import create
from tests.integration.net.test_addresses import static_subnet

pytestmark = pytest.mark.root


@pytest.fixture
def server_overrides() -> dict[str, object]:
    pool = ipaddress.IPv4Network(random_pool())
    return {"network_pool": str(next(pool.subnets(new_prefix=29))), "max_containers": 3}


async def capacity(server: Server) -> int:
    r = await server.client.get("/capacity")
    return int(r.json()["max_containers"])


async def test_pool_exhaustion_and_capacity(server: Server) -> None:
    c = server.client
    assert await capacity(server) == 2  # a /29 holds two /30s, below --max-containers 3
    await create(c, handle="one")
    await create(c, handle="two")
    assert await capacity(server) == 0
    r = await c.post("/containers", json={"handle": "three"})
    assert r.status_code == 503, r.text
    assert r.json()["type"] == "CapacityExhaustedError"
    # A static subnet does not need the pool, but --max-containers still counts it.
    await create(c, handle="static", network=str(static_subnet()))
    r = await c.post("/containers", json={"handle": "four", "network": str(static_subnet())})
    assert r.status_code == 503, r.text
    assert (await c.delete("/containers/one")).status_code == 200
    assert (await c.delete("/containers/static")).status_code == 200
    assert await capacity(server) == 1
    again = await create(c, handle="again")
    pool = ipaddress.IPv4Network(server.config.network_pool)
    assert again["container_ip"] == str(pool.network_address + 1)
