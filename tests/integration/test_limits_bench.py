"""Measurements of limits (printed; run with -s). The bars are reported, not asserted: a create
with a disk limit within 1.5x the median of one without; 200 containers with every limit
created and destroyed with nothing left."""

from __future__ import annotations

import statistics
import time

import pytest

from tests.integration.conftest import Server, leftovers

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20
EVERY_LIMIT = {
    "memory": {"limit_in_bytes": 64 * MiB},
    "cpu": {"limit_in_shares": 512},
    "pids": {"max": 64},
    "disk": {"byte_hard": 64 * MiB, "inode_hard": 4096},
}


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    return f"median {statistics.median(s) * 1000:.1f} ms, p90 {s[int(len(s) * 0.9)] * 1000:.1f} ms"


async def test_create_with_a_disk_limit_costs(server: Server) -> None:
    c = server.client
    plain: list[float] = []
    disk: list[float] = []
    for _ in range(25):
        for samples, spec in ((plain, {}), (disk, {"limits": {"disk": {"byte_hard": 256 * MiB}}})):
            t = time.perf_counter()
            r = await c.post("/containers", json={"handle": "b", **spec})
            samples.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
            assert (await c.delete("/containers/b")).status_code == 200
    ratio = statistics.median(disk) / statistics.median(plain)
    print(
        f"\ncreate without limits: {_ms(plain)}; with a disk limit: {_ms(disk)}; "
        f"ratio of medians {ratio:.2f} (bar 1.5)"
    )
    assert leftovers(server.config) == []


async def test_200_containers_with_every_limit(server: Server) -> None:
    c = server.client
    t = time.perf_counter()
    for i in range(200):
        spec = {"handle": f"all{i}", "limits": EVERY_LIMIT}
        r = await c.post("/containers", json=spec)
        assert r.status_code == 200, r.text
    created = time.perf_counter() - t
    t = time.perf_counter()
    scrape = await c.get("/metrics")
    scraped = time.perf_counter() - t
    assert scrape.text.count("garden_container_memory_limit_bytes{") == 200
    t = time.perf_counter()
    for i in range(200):
        assert (await c.delete(f"/containers/all{i}")).status_code == 200
    destroyed = time.perf_counter() - t
    left = leftovers(server.config)
    print(
        f"\n200 containers with memory, cpu, pids and disk limits: created in {created:.1f} s, "
        f"/metrics in {scraped * 1000:.0f} ms, destroyed in {destroyed:.1f} s, left: {left}"
    )
    assert left == []
