"""Routes of the figures: `GET /containers/:h/metrics`, `GET /containers/bulk_info` and
`bulk_metrics`, and `GET /metrics` (Prometheus text), plus the request hooks that count every
request by route and status and time it."""

from __future__ import annotations

import time

from quart import Response, g, request
from quart_trio import QuartTrio

from garden.actors.supervisor import Supervisor
from garden.api import ContainerInfo, ContainerMetrics
from garden.errors import GardenError
from garden.http.errors import body_of
from garden.http.prometheus import RequestMetrics, render
from garden.http.respond import json_response
from garden.linux.plan import ContainerStats

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def register(app: QuartTrio, sup: Supervisor) -> None:
    requests = RequestMetrics()
    app.extensions["request_metrics"] = requests

    @app.before_request
    async def _metrics_start() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    async def _metrics_finish(response: Response) -> Response:
        started = g.get("metrics_started")
        rule = request.url_rule.rule if request.url_rule else "-"
        took = time.perf_counter() - started if started else 0.0
        requests.observe(request.method, rule, response.status_code, took)
        return response

    @app.get("/containers/<handle>/metrics")
    async def container_metrics(handle: str) -> Response:
        return json_response(_metrics(sup.info(handle, await sup.stats(handle))))

    @app.get("/containers/bulk_info")
    async def bulk_info() -> Response:
        out: dict[str, object] = {}
        for handle in _handles():
            try:
                stats = await sup.stats(handle)
                out[handle] = {"info": sup.info(handle, stats)}
            except GardenError as exc:
                out[handle] = {"error": body_of(exc)}
        return json_response(out)

    @app.get("/containers/bulk_metrics")
    async def bulk_metrics() -> Response:
        out: dict[str, object] = {}
        for handle in _handles():
            try:
                out[handle] = {"metrics": _metrics(sup.info(handle, await sup.stats(handle)))}
            except GardenError as exc:
                out[handle] = {"error": body_of(exc)}
        return json_response(out)

    @app.get("/metrics")
    async def prometheus() -> Response:
        containers = [sup.state.containers[h] for h in sup.handles({})]
        stats: dict[str, ContainerStats] = {}
        for c in containers:
            try:
                stats[c.handle] = await sup.stats(c.handle)
            except GardenError:
                continue  # destroyed meanwhile
        text = render(
            requests=requests,
            journal=sup.journal.stats(),
            containers=containers,
            stats=stats,
        )
        return Response(text, status=200, content_type=PROMETHEUS_TYPE)


def _handles() -> list[str]:
    raw = request.args.get("handles", "")
    return list(dict.fromkeys(h for h in raw.split(",") if h))


def _metrics(info: ContainerInfo) -> ContainerMetrics:
    return ContainerMetrics(
        memory_stat=info.memory_stat,
        cpu_stat=info.cpu_stat,
        disk_stat=info.disk_stat,
        bandwidth_stat=info.bandwidth_stat,
        pids_stat=info.pids_stat,
    )
