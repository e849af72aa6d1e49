"""Process output as the NDJSON stream of API.md: the process id first, then the output in the
order produced, then the exit status; text that never splits a UTF-8 character, or base64 of the
exact bytes."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from typing import Literal

import msgspec

# SIMD base64: ~40x faster than binascii here, which otherwise costs more CPU than all the rest of
# a base64 stream together.
from pybase64 import b64encode

from garden.actors.processes import LiveProcess
from garden.actors.supervisor import Supervisor
from garden.bounds import PROCESS_OUTPUT_CAP
from garden.errors import InvalidRequestError

# Attach replays at most this much of what a process wrote before it follows live output.
ATTACH_REPLAY_BYTES = PROCESS_OUTPUT_CAP

Encoding = Literal["utf-8", "base64"]

_encode = msgspec.json.Encoder().encode


class _Data(msgspec.Struct):
    process_id: str
    source: str
    data: str


def encoding_of(value: str | None) -> Encoding:
    if value in (None, "", "utf-8", "text"):
        return "utf-8"
    if value == "base64":
        return "base64"
    raise InvalidRequestError(f"unknown encoding {value!r}: use base64 or leave it out")


async def process_stream(
    sup: Supervisor,
    handle: str,
    process: LiveProcess,
    *,
    encoding: Encoding,
    replay_bytes: int | None,
) -> AsyncIterator[bytes]:
    pid = process.process_id
    with sup.reaper.hold(handle):
        yield _encode({"process_id": pid}) + b"\n"
        decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        # base64 needs no JSON escaping: its lines are put together from bytes directly.
        heads = {source: _encode(_Data(pid, source, ""))[:-2] for source in decoders}
        async with sup.process_kernel.output(process.facts, replay_bytes=replay_bytes) as chunks:
            async for chunk in chunks:
                if encoding == "base64":
                    if chunk.data:
                        yield b"".join((heads[chunk.source], b64encode(chunk.data), b'"}\n'))
                    continue
                text = decoders[chunk.source].decode(chunk.data)
                if text:
                    yield _encode(_Data(pid, chunk.source, text)) + b"\n"
        if encoding == "utf-8":
            for source, decoder in decoders.items():
                rest = decoder.decode(b"", final=True)
                if rest:
                    yield _encode(_Data(pid, source, rest)) + b"\n"
        status = await process.wait()
        yield _encode({"process_id": pid, "exit_status": status}) + b"\n"
