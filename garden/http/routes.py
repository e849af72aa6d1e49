"""Routes of the container life cycle, properties and grace time: each turns a request into a
supervisor call and its answer into JSON."""

from __future__ import annotations

from quart import Response, g, request
from quart_trio import QuartTrio

from garden.actors.supervisor import Supervisor
from garden.api import (
    ContainerSpec,
    GraceTime,
    HandleReply,
    HandlesReply,
    PropertyValue,
    StopRequest,
)
from garden.http.respond import json_response, origin, read_json

EMPTY: dict[str, str] = {}


def register(app: QuartTrio, sup: Supervisor) -> None:
    @app.get("/ping")
    async def ping() -> Response:
        return json_response(EMPTY)

    @app.get("/capacity")
    async def capacity() -> Response:
        return json_response(sup.capacity())

    @app.get("/containers")
    async def list_containers() -> Response:
        filters = {k: v for k, v in request.args.items(multi=True)}
        return json_response(HandlesReply(handles=sup.handles(filters)))

    @app.post("/containers")
    async def create() -> Response:
        spec = await read_json(ContainerSpec)
        handle = await sup.create(spec, origin())
        g.handle = handle  # for the request's log line
        return json_response(HandleReply(handle=handle))

    @app.get("/containers/<handle>/info")
    async def info(handle: str) -> Response:
        stats = await sup.stats(handle)
        return json_response(sup.info(handle, stats))

    @app.delete("/containers/<handle>")
    async def destroy(handle: str) -> Response:
        await sup.destroy(handle, origin())
        return json_response(EMPTY)

    @app.put("/containers/<handle>/stop")
    async def stop(handle: str) -> Response:
        body = await read_json(StopRequest)
        await sup.stop(handle, body.kill, origin())
        return json_response(EMPTY)

    @app.get("/containers/<handle>/properties")
    async def properties(handle: str) -> Response:
        return json_response(sup.container(handle).properties)

    @app.get("/containers/<handle>/properties/<key>")
    async def get_property(handle: str, key: str) -> Response:
        return json_response(PropertyValue(value=sup.get_property(handle, key)))

    @app.put("/containers/<handle>/properties/<key>")
    async def set_property(handle: str, key: str) -> Response:
        body = await read_json(PropertyValue)
        await sup.set_property(handle, key, body.value, origin())
        return json_response(EMPTY)

    @app.delete("/containers/<handle>/properties/<key>")
    async def delete_property(handle: str, key: str) -> Response:
        await sup.delete_property(handle, key, origin())
        return json_response(EMPTY)

    @app.put("/containers/<handle>/grace_time")
    async def grace_time(handle: str) -> Response:
        body = await read_json(GraceTime)
        await sup.set_grace_time(handle, body.grace_time, origin())
        return json_response(EMPTY)
