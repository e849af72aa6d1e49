"""Image routes (docs/images.md): `GET /images` (what the store holds), `POST /images` (import
one, answering NDJSON progress lines and then the image) and `POST /images/prune`."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import msgspec
import trio
from quart import Response
from quart_trio import QuartTrio

from garden.actors.images import ImportProgress
from garden.actors.supervisor import Supervisor
from garden.errors import GardenError, InvalidRequestError
from garden.events.schema import Origin
from garden.http.errors import body_of
from garden.http.respond import json_response, origin, read_json
from garden.http.routes_files import _ChannelBody
from garden.images.uri import ImageSource, parse_rootfs
from garden.images.wire import ImageInfo, ImportLine, ImportRequest

_encode = msgspec.json.Encoder().encode
TICK = 0.25  # seconds between progress lines


def _progress_line(p: ImportProgress) -> bytes:
    m = p.manifest
    layers = m.layers if m is not None else []
    line = ImportLine(
        layer=p.layer, layers=len(layers), bytes=p.total_bytes, size=sum(x.size for x in layers)
    )
    return _encode(line) + b"\n"


def register(app: QuartTrio, sup: Supervisor) -> None:
    @app.get("/images")
    async def list_images() -> Response:
        return json_response(sup.image_service().listing())

    @app.post("/images/prune")
    async def prune_images() -> Response:
        return json_response(await sup.image_service().prune(origin()))

    @app.post("/images")
    async def import_image() -> Response:
        req = await read_json(ImportRequest)
        source = parse_rootfs(req.rootfs)
        if not isinstance(source, ImageSource):
            raise InvalidRequestError(f"rootfs {req.rootfs!r}: not an image this server can read")
        service = sup.image_service()
        # A missing image is a 404 before the stream; a registry tag is asked for again.
        await service.store.inspect(source, refresh=True)
        body = _ChannelBody(_import_stream(sup, source, origin()))
        return Response(body, content_type="application/x-ndjson")


@trio.as_safe_channel
async def _import_stream(
    sup: Supervisor, source: ImageSource, who: Origin
) -> AsyncGenerator[bytes, None]:
    service = sup.image_service()
    progress = ImportProgress()
    done = trio.Event()
    outcome: list[ImageInfo | GardenError] = []

    async def work() -> None:
        try:
            async with service.use(source, who, progress, refresh=True) as manifest:
                digest = manifest.digest
            outcome.append(next(i for i in service.listing().images if i.digest == digest))
        except GardenError as e:
            outcome.append(e)
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(work)
        while not done.is_set():
            yield _progress_line(progress)
            with trio.move_on_after(TICK):
                await done.wait()
    result = outcome[0]
    if isinstance(result, GardenError):
        err = body_of(result)
        yield _encode(ImportLine(error=msgspec.structs.asdict(err))) + b"\n"
    else:
        yield _progress_line(progress) + _encode(ImportLine(image=result)) + b"\n"
