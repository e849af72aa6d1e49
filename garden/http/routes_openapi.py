"""`GET /openapi.json`: the OpenAPI 3.1 document of the API (built by `garden.openapi`)."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from garden.actors.supervisor import Supervisor
from garden.openapi import document_bytes


def register(app: QuartTrio, sup: Supervisor) -> None:
    @app.get("/openapi.json")
    async def openapi() -> Response:
        return Response(document_bytes(), content_type="application/json")
