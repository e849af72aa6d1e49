"""Routes of processes: run (spawn + stream), attach, stdin, signals."""

from __future__ import annotations

import re
import signal as signals

from quart import Response, request
from quart_trio import QuartTrio

from garden.actors.supervisor import Supervisor
from garden.api import ProcessSpec, SignalRequest
from garden.errors import ConflictError, InvalidRequestError
from garden.http import rawbody
from garden.http.respond import json_response, origin, read_json
from garden.http.streaming import ATTACH_REPLAY_BYTES, encoding_of, process_stream

NDJSON = "application/x-ndjson"
_STDIN_PATH = re.compile(r"/containers/[^/]+/processes/[^/]+/stdin")


def _is_stdin(method: str, path: str) -> bool:
    return method == "PUT" and _STDIN_PATH.fullmatch(path) is not None


def signal_number(value: str | int) -> int:
    if isinstance(value, int):
        number = value
    else:
        name = value.upper()
        if name.isdigit():
            number = int(name)
        else:
            name = name if name.startswith("SIG") else f"SIG{name}"
            try:
                number = int(signals.Signals[name])
            except KeyError:
                raise InvalidRequestError(f"unknown signal {value!r}") from None
    if not 0 < number < signals.NSIG:
        raise InvalidRequestError(f"signal {value!r} is out of range")
    return number


def register(app: QuartTrio, sup: Supervisor) -> None:
    @app.post("/containers/<handle>/processes")
    async def run(handle: str) -> Response:
        spec = await read_json(ProcessSpec)
        encoding = encoding_of(request.args.get("encoding"))
        process = await sup.run_process(handle, spec, origin())
        body = process_stream(sup, handle, process, encoding=encoding, replay_bytes=None)
        return Response(body, content_type=NDJSON)

    @app.get("/containers/<handle>/processes/<process_id>")
    async def attach(handle: str, process_id: str) -> Response:
        encoding = encoding_of(request.args.get("encoding"))
        process = sup.process(handle, process_id)
        body = process_stream(
            sup, handle, process, encoding=encoding, replay_bytes=ATTACH_REPLAY_BYTES
        )
        return Response(body, content_type=NDJSON)

    # stdin streams: read with backpressure and not bounded by --max-body-bytes.
    rawbody.stream_bodies(app, _is_stdin)

    @app.put("/containers/<handle>/processes/<process_id>/stdin")
    async def stdin(handle: str, process_id: str) -> Response:
        body = rawbody.current()
        async with body.drained():
            process = sup.process(handle, process_id)
            if not process.running:
                raise ConflictError(
                    f"process {process_id} has exited", handle=handle, process_id=process_id
                )
            stream = await sup.process_kernel.open_stdin(process.facts)
            with sup.reaper.hold(handle):
                try:
                    async for chunk in body.chunks():
                        await stream.send_all(chunk)
                except rawbody.ClientDisconnected:
                    pass  # the end of the body closes stdin either way
                finally:
                    await stream.aclose()
        return json_response({})

    @app.post("/containers/<handle>/processes/<process_id>/signal")
    async def send_signal(handle: str, process_id: str) -> Response:
        body = await read_json(SignalRequest)
        delivered = sup.signal_process(handle, process_id, signal_number(body.signal))
        if not delivered:
            raise ConflictError(
                f"process {process_id} has exited", handle=handle, process_id=process_id
            )
        return json_response({})
