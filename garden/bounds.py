"""Bounds on what one client may ask of the server: request sizes, and how many properties,
env entries, bind mounts, net rules and processes a container may have. Every bound is here
(docs/security.md#limits-on-requests has the table); the checks are pure and raise the
400/413 of API.md before anything is recorded, so a refused request leaves no state behind.

Counts and sizes are of what the client sent: characters of a str (which msgspec already
decoded), bytes of a body. Bounds that a server flag can change are defaults of `ServerConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from garden.api import ProcessSpec
from garden.errors import InvalidRequestError, PayloadTooLargeError

# --- HTTP (hypercorn and Quart; garden/main.py and garden/http/app.py apply these) ---

# A JSON request body (every route but file uploads and stdin, which stream). `--max-body-bytes`.
MAX_BODY_BYTES: Final = 1 << 20
# The URL plus every header name and value (garden/http/head_limits.py; hypercorn's
# h11_max_incomplete_size too, which bounds a request head still arriving).
MAX_HEADER_BYTES: Final = 16 * 1024
MAX_HEADERS: Final = 100
# One WebSocket message of the terminal (stdin chunks and control frames are small).
MAX_WEBSOCKET_MESSAGE: Final = 1 << 20
# A connection that has not finished its request headers this long after it opened or after
# its last answer is closed (hypercorn's keep-alive timer, which also runs while the headers
# of the next request trickle in). `--keep-alive-timeout`.
KEEP_ALIVE_TIMEOUT: Final = 75.0

# --- container spec (POST /containers) and later changes ---

MAX_PROPERTIES: Final = 1024  # per container, at create and after every PUT
MAX_PROPERTY_KEY: Final = 1024  # characters of a key (it is also a URL path segment)
MAX_PROPERTY_BYTES: Final = 64 * 1024  # key + value of one property
MAX_PROPERTIES_TOTAL: Final = 1 << 20  # keys + values of every property of a container
MAX_ENV_ENTRIES: Final = 1024  # of a container's env, and of a process's env
MAX_ENV_BYTES: Final = 256 * 1024  # the same, all entries together (Linux allows 2 MiB)
MAX_ARGS: Final = 4096  # a process's args
MAX_ARGS_BYTES: Final = 256 * 1024
MAX_BIND_MOUNTS: Final = 64
MAX_NET_IN: Final = 256  # port mappings of one container
MAX_NET_OUT: Final = 1024  # net-out rules of one container
MAX_PROCESSES: Final = 1024  # processes running at once in one container
# Output of one process kept for attach (API.md: oldest dropped first); for passthrough
# processes also what stays on disk of each stream while the server runs (docs/processes.md).
PROCESS_OUTPUT_CAP: Final = 16 << 20
MAX_PATH: Final = 4096  # a path (PATH_MAX) in a process spec, a bind mount or a file route


def check_count(what: str, count: int, bound: int, *, handle: str = "") -> None:
    if count > bound:
        raise InvalidRequestError(f"at most {bound} {what} (asked for {count})", handle=handle)


def check_body_size(size: int, bound: int = MAX_BODY_BYTES) -> None:
    if size > bound:
        raise PayloadTooLargeError(f"request body of {size} bytes is over the limit of {bound}")


def check_env(env: Sequence[str], what: str = "env") -> None:
    """`NAME=value` entries, at most MAX_ENV_ENTRIES of them, MAX_ENV_BYTES together."""
    check_count(f"{what} entries", len(env), MAX_ENV_ENTRIES)
    total = 0
    for item in env:
        if "=" not in item or item.startswith("=") or "\0" in item:
            raise InvalidRequestError(f"{what} entry {item[:64]!r} must look like NAME=value")
        total += len(item)
    if total > MAX_ENV_BYTES:
        raise InvalidRequestError(f"{what} is larger than {MAX_ENV_BYTES} bytes")


def check_args(args: Sequence[str]) -> None:
    check_count("args", len(args), MAX_ARGS)
    total = 0
    for arg in args:
        if "\0" in arg:
            raise InvalidRequestError("args must not contain NUL bytes")
        total += len(arg)
    if total > MAX_ARGS_BYTES:
        raise InvalidRequestError(f"args are larger than {MAX_ARGS_BYTES} bytes")


def check_property(key: str, value: str) -> None:
    if not key or "\0" in key or "\0" in value:
        raise InvalidRequestError("property keys must be non-empty and free of NUL bytes")
    if len(key) > MAX_PROPERTY_KEY:
        raise InvalidRequestError(f"property key is longer than {MAX_PROPERTY_KEY} characters")
    if len(key) + len(value) > MAX_PROPERTY_BYTES:
        raise InvalidRequestError(
            f"property {key[:64]!r} is larger than {MAX_PROPERTY_BYTES} characters"
        )


def check_properties(props: Mapping[str, str], *, handle: str = "") -> None:
    """A container's whole set of properties (at create, or as a PUT would leave it)."""
    check_count("properties", len(props), MAX_PROPERTIES, handle=handle)
    total = 0
    for key, value in props.items():
        check_property(key, value)
        total += len(key) + len(value)
    if total > MAX_PROPERTIES_TOTAL:
        raise InvalidRequestError(
            f"properties would be larger than {MAX_PROPERTIES_TOTAL} characters together",
            handle=handle,
        )


def check_property_change(
    props: Mapping[str, str], key: str, value: str, *, handle: str = ""
) -> None:
    """A PUT of one property against the container's current ones."""
    check_property(key, value)
    count = len(props) + (key not in props)
    check_count("properties", count, MAX_PROPERTIES, handle=handle)
    total = sum(len(k) + len(v) for k, v in props.items() if k != key) + len(key) + len(value)
    if total > MAX_PROPERTIES_TOTAL:
        raise InvalidRequestError(
            f"properties would be larger than {MAX_PROPERTIES_TOTAL} characters together",
            handle=handle,
        )


def check_process_spec(spec: ProcessSpec) -> None:
    """A process spec's sizes, and no NUL byte where the kernel takes C strings."""
    check_env(spec.env, "process env")
    check_args(spec.args)
    for what, text in (("path", spec.path), ("dir", spec.dir), ("user", spec.user)):
        if text is not None and ("\0" in text or len(text) > MAX_PATH):
            raise InvalidRequestError(f"process {what} must be free of NUL bytes and short")
