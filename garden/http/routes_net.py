"""Routes of container networking: net-in port mappings, net-out rules, bandwidth limits."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from garden.actors.supervisor import Supervisor
from garden.api import BandwidthLimits, NetInRequest, NetOutRule
from garden.http.respond import json_response, origin, read_json

EMPTY: dict[str, str] = {}


def register(app: QuartTrio, sup: Supervisor) -> None:
    @app.post("/containers/<handle>/net/in")
    async def net_in(handle: str) -> Response:
        body = await read_json(NetInRequest)
        mapping = await sup.net_in(handle, body.host_port, body.container_port, origin())
        return json_response(mapping)

    @app.post("/containers/<handle>/net/out")
    async def net_out(handle: str) -> Response:
        rule = await read_json(NetOutRule)
        await sup.net_out(handle, rule, origin())
        return json_response(EMPTY)

    @app.put("/containers/<handle>/limits/bandwidth")
    async def put_bandwidth(handle: str) -> Response:
        body = await read_json(BandwidthLimits)
        return json_response(await sup.limit_bandwidth(handle, body, origin()))

    @app.get("/containers/<handle>/limits/bandwidth")
    async def get_bandwidth(handle: str) -> Response:
        return json_response(sup.bandwidth(handle))
