"""The WebSocket terminal of a process (API.md): binary frames carry stdin from the client and
output to it; text frames carry `{"resize": {"columns", "rows"}}` and `{"signal": ...}` from the
client and `{"exit_status": n}` from the server, after which the server closes the socket."""

from __future__ import annotations

import json
import logging

import trio
from quart import websocket
from quart_trio import QuartTrio

from garden.actors.processes import LiveProcess
from garden.actors.supervisor import Supervisor
from garden.errors import GardenError, InvalidRequestError
from garden.http.errors import body_of
from garden.http.routes_processes import signal_number
from garden.http.streaming import ATTACH_REPLAY_BYTES

log = logging.getLogger("garden.http.terminal")


def register(app: QuartTrio, sup: Supervisor) -> None:
    @app.websocket("/containers/<handle>/processes/<process_id>/ws")
    async def terminal(handle: str, process_id: str) -> None:
        try:
            process = sup.process(handle, process_id)
        except GardenError as exc:
            await websocket.accept()
            await websocket.send(json.dumps({"error": _err(exc)}))
            await websocket.close(1008)
            return
        await websocket.accept()
        with sup.reaper.hold(handle):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_client_to_process, sup, process)
                await _process_to_client(sup, process)
                nursery.cancel_scope.cancel()
        await websocket.close(1000)


def _err(exc: GardenError) -> dict[str, str]:
    body = body_of(exc)
    return {"type": body.type, "message": body.message}


async def _process_to_client(sup: Supervisor, process: LiveProcess) -> None:
    async with sup.process_kernel.output(process.facts, replay_bytes=ATTACH_REPLAY_BYTES) as out:
        async for chunk in out:
            await websocket.send(chunk.data)
    status = await process.wait()
    await websocket.send(json.dumps({"exit_status": status}))


async def _client_to_process(sup: Supervisor, process: LiveProcess) -> None:
    stdin = None
    try:
        if process.facts.stdin and process.running:
            stdin = await sup.process_kernel.open_stdin(process.facts)
        while True:
            message = await websocket.receive()
            if isinstance(message, bytes):
                if stdin is None:
                    await websocket.send(json.dumps({"error": "this process has no stdin"}))
                    continue
                await stdin.send_all(message)
                continue
            try:
                await _control(sup, process, message)
            except GardenError as exc:
                await websocket.send(json.dumps({"error": _err(exc)}))
    finally:
        if stdin is not None:
            with trio.CancelScope(shield=True):
                await stdin.aclose()


async def _control(sup: Supervisor, process: LiveProcess, message: str) -> None:
    try:
        request = json.loads(message)
    except ValueError as exc:
        raise InvalidRequestError(f"text frames must be JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise InvalidRequestError("text frames must be JSON objects")
    if "resize" in request:
        size = request["resize"]
        if not isinstance(size, dict):
            raise InvalidRequestError("resize needs {columns, rows}")
        columns, rows = size.get("columns"), size.get("rows")
        if not isinstance(columns, int) or not isinstance(rows, int) or columns <= 0 or rows <= 0:
            raise InvalidRequestError("resize needs positive integer columns and rows")
        sup.process_kernel.resize(process.facts, rows, columns)
    if "signal" in request:
        sig = request["signal"]
        if not isinstance(sig, str | int):
            raise InvalidRequestError("signal must be a name or a number")
        sup.process_kernel.signal(process.facts, signal_number(sig))
    await trio.lowlevel.checkpoint()
