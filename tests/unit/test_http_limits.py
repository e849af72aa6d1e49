"""The limits, metrics and bulk routes over a real listener with the fake kernel, and the
Prometheus text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from garden.events.journal import JournalStats
from garden.http.prometheus import RequestMetrics, render
from tests.unit.fakes import serve_fakes


@pytest.fixture
async def client(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=await serve_fakes(nursery, tmp_path)) as c:
        yield c
    nursery.cancel_scope.cancel()


async def test_limit_routes(client: httpx.AsyncClient) -> None:
    spec = {"handle": "c", "limits": {"cpu": {"limit_in_shares": 300}, "disk": {"byte_hard": 10}}}
    assert (await client.post("/containers", json=spec)).status_code == 200
    assert (await client.get("/containers/c/limits/cpu")).json() == {"limit_in_shares": 300}
    assert (await client.get("/containers/c/limits/memory")).json() == {"limit_in_bytes": 0}
    r = await client.put("/containers/c/limits/memory", json={"limit_in_bytes": 10_000_000})
    assert r.status_code == 200
    assert r.json() == {"limit_in_bytes": 9_998_336}
    r = await client.put("/containers/c/limits/pids", json={"max": "x"})
    assert r.status_code == 400
    assert r.json()["type"] == "InvalidRequestError"
    r = await client.put("/containers/c/limits/disk", json={"inode_soft": 4})
    assert r.json()["byte_hard"] == 10
    assert r.json()["inode_soft"] == 4
    assert (await client.get("/containers/c/limits/nonsense")).status_code == 404
    assert (await client.get("/containers/zz/limits/cpu")).status_code == 404
    r = await client.post("/containers", json={"limits": {"cpu": {"limit_in_shares": 1}}})
    assert r.status_code == 400


async def test_info_metrics_bulk_and_prometheus(client: httpx.AsyncClient) -> None:
    assert (await client.post("/containers", json={"handle": "a"})).status_code == 200
    info = (await client.get("/containers/a/info")).json()
    assert info["memory_stat"]["usage_in_bytes"] == 4096
    assert info["disk_stat"] == {"bytes_used": 0, "inodes_used": 1}
    assert info["bandwidth_stat"] == {"in_rate": 0, "out_rate": 0}  # networking's figures
    metrics = (await client.get("/containers/a/metrics")).json()
    assert metrics["cpu_stat"] == {"usage": 1000}
    assert metrics["bandwidth_stat"] == info["bandwidth_stat"]
    bulk = (await client.get("/containers/bulk_info?handles=a,b,a")).json()
    assert list(bulk) == ["a", "b"]
    assert bulk["a"]["info"]["state"] == "active"
    assert bulk["b"]["error"]["type"] == "ContainerNotFoundError"
    assert (await client.get("/containers/bulk_info")).json() == {}
    bulk = (await client.get("/containers/bulk_metrics?handles=a")).json()
    assert bulk["a"]["metrics"]["pids_stat"] == {"current": 1}
    text = (await client.get("/metrics")).text
    assert 'garden_container_memory_usage_bytes{handle="a"} 4096' in text
    assert 'garden_container_cpu_usage_seconds_total{handle="a"} 1e-06' in text
    assert 'route="/containers/<handle>/info",status="200"} 1' in text
    assert "# TYPE garden_http_request_duration_seconds histogram" in text


def test_prometheus_text_format() -> None:
    req = RequestMetrics()
    req.observe("GET", "/ping", 200, 0.0004)
    req.observe("GET", "/ping", 200, 0.3)
    req.observe("GET", "/x", 404, 20.0)
    stats = JournalStats(
        records=3, batches=2, bytes=100, write_errors=0, largest_batch=2, last_seq=3, size_bytes=9
    )
    text = render(requests=req, journal=stats, containers=[], stats={})
    lines = text.splitlines()
    assert 'garden_http_requests_total{method="GET",route="/ping",status="200"} 2' in lines
    bucket = 'garden_http_request_duration_seconds_bucket{method="GET",route="/ping",le='
    assert f'{bucket}"0.001"}} 1' in lines
    assert f'{bucket}"0.25"}} 1' in lines
    assert f'{bucket}"0.5"}} 2' in lines
    assert f'{bucket}"+Inf"}} 2' in lines
    assert 'garden_http_request_duration_seconds_count{method="GET",route="/x"} 1' in lines
    assert "garden_event_log_size_bytes 9" in lines
    assert 'garden_containers{phase="active"} 0' in lines
    assert text.endswith("\n")
    for line in lines:  # every sample belongs to a declared family
        if not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            family = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            assert f"# TYPE {family} " in text, line
