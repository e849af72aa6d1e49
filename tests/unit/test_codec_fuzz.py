"""Hypothesis on the codecs a client feeds or reads: the tar reader (hostile archives end in
an InvalidRequestError, never another exception; archives tarfile writes read back exactly)
and the base64 lines of process streams (exact bytes back). Deterministic: derandomized."""

from __future__ import annotations

import io
import json
import tarfile

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from pybase64 import b64decode, b64encode

from garden.client.streams import Output, base64_output
from garden.errors import InvalidRequestError
from garden.http.streaming import _Data, _encode
from garden.linux.tar_reader import FileSource, TarReader

FUZZ = settings(
    max_examples=200, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)

names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"), min_size=1, max_size=40
)
members = st.lists(st.tuples(names, st.binary(max_size=2000)), max_size=5, unique_by=lambda m: m[0])


def _archive(items: list[tuple[str, bytes]], fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _read_all(data: bytes, chunk: int = 1 << 20) -> list[tuple[str, bytes]]:
    reader = TarReader(FileSource(io.BytesIO(data), chunk))
    out = []
    while (info := reader.next()) is not None:
        out.append((info.name, b"".join(bytes(p) for p in reader.data())))
    return out


@FUZZ
@given(members, st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]), st.integers(1, 4096))
def test_tar_round_trip(items: list[tuple[str, bytes]], fmt: int, chunk: int) -> None:
    assert _read_all(_archive(items, fmt), chunk) == items


@FUZZ
@given(members, st.data())
def test_damaged_archives_are_a_400(items: list[tuple[str, bytes]], data: st.DataObject) -> None:
    archive = bytearray(_archive(items, tarfile.PAX_FORMAT))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(archive) - 1))
        archive[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(archive)))
    try:
        _read_all(bytes(archive[:cut]))
    except InvalidRequestError:
        pass


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes_are_a_400_or_an_empty_archive(blob: bytes) -> None:
    try:
        _read_all(blob)
    except InvalidRequestError:
        pass


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(["stdout", "stderr"]), names)
def test_base64_stream_lines_carry_the_exact_bytes(data: bytes, source: str, pid: str) -> None:
    # The stream builds base64 lines from bytes directly (garden/http/streaming.py).
    head = _encode(_Data(pid, source, ""))[:-2]
    line = b"".join((head, b64encode(data), b'"}\n'))
    decoded = json.loads(line)
    assert decoded["process_id"] == pid and decoded["source"] == source
    assert b64decode(decoded["data"]) == data
    # ... and the clients' fast path reads them back without JSON-decoding the data
    assert base64_output(line[:-1]) == Output(source, data)  # type: ignore[arg-type]
    assert base64_output(memoryview(line)[:-1]) == Output(source, data)  # type: ignore[arg-type]


keys = st.sampled_from(["process_id", "source", "data", "exit_status", 'data"', "x"])


@FUZZ
@given(
    st.dictionaries(
        keys,
        st.one_of(st.binary(max_size=64).map(lambda b: b64encode(b).decode()), names,
                  st.sampled_from(["stdout", "stderr", '"data":"', "A/+="]), st.integers(0, 9)),
        max_size=5,
    ),
    st.sampled_from([(",", ":"), (", ", ": ")]),
    st.booleans(),
)  # fmt: skip
def test_the_base64_fast_path_agrees_with_json_or_declines(
    payload: dict[str, object], separators: tuple[str, str], escape_slash: bool
) -> None:
    # Any JSON object at all (any key order, spacing, escapes, other keys): the fast path
    # either gives what decoding the JSON gives, or None (and the client decodes the JSON).
    line = json.dumps(payload, separators=separators).encode()
    if escape_slash:
        line = line.replace(b"/", b"\\/")
    out = base64_output(line)
    if out is None:
        return
    decoded = json.loads(line)
    assert decoded["source"] in ("stdout", "stderr") and "exit_status" not in decoded
    assert (out.source, out.data) == (decoded["source"], b64decode(decoded["data"], validate=True))
