"""Routes of the memory, cpu, disk and pids limits (`PUT`/`GET /containers/:h/limits/KIND`):
every answer is the limit of that kind in force, with 0 for "no limit"."""

from __future__ import annotations

import msgspec
from quart import Response
from quart_trio import QuartTrio

from garden import limits as lim
from garden.actors.supervisor import Supervisor
from garden.api import CpuLimits, DiskLimits, Limits, MemoryLimits, PidLimits
from garden.http.respond import json_response, origin, read_json

KIND_TYPES: dict[str, type[msgspec.Struct]] = {
    "memory": MemoryLimits,
    "cpu": CpuLimits,
    "disk": DiskLimits,
    "pids": PidLimits,
}


def register(app: QuartTrio, sup: Supervisor) -> None:
    for kind, body_type in KIND_TYPES.items():
        _register_kind(app, sup, kind, body_type)


def _register_kind(
    app: QuartTrio, sup: Supervisor, kind: str, body_type: type[msgspec.Struct]
) -> None:
    async def put_limit(handle: str) -> Response:
        body = await read_json(body_type)
        put = msgspec.convert({kind: body}, Limits, from_attributes=True)
        in_force = await sup.set_limits(handle, put, origin())
        return json_response(lim.wire(kind, in_force))

    async def get_limit(handle: str) -> Response:
        return json_response(lim.wire(kind, sup.limits(handle)))

    path = f"/containers/<handle>/limits/{kind}"
    app.add_url_rule(path, f"put_limit_{kind}", put_limit, methods=["PUT"])
    app.add_url_rule(path, f"get_limit_{kind}", get_limit, methods=["GET"])
