"""Where the server is: `--target`, else `GARDEN_TARGET`, else http://127.0.0.1:7777.

Accepted forms: `http://HOST[:PORT][/PREFIX]`, `https://...` (a TLS proxy in front of the
server), `unix:/PATH`, `unix:///PATH` and a bare absolute `/PATH` (the server's
`--bind-socket`). The bearer token is the one given, else the first token of the given token
file, else `$GARDEN_TOKEN`, else the first token of the file `$GARDEN_TOKEN_FILE` names.
"""

from __future__ import annotations

import os
from typing import Literal, final

DEFAULT_TARGET = "http://127.0.0.1:7777"
TARGET_ENV = "GARDEN_TARGET"
TOKEN_ENV = "GARDEN_TOKEN"
TOKEN_FILE_ENV = "GARDEN_TOKEN_FILE"


@final
class Target:
    """A parsed target. `socket_path` is set for a unix socket (then host is `localhost`)."""

    __slots__ = ("host", "port", "prefix", "scheme", "socket_path")

    def __init__(
        self,
        *,
        scheme: Literal["http", "https"],
        host: str,
        port: int,
        prefix: str = "",
        socket_path: str | None = None,
    ) -> None:
        self.scheme: Literal["http", "https"] = scheme
        self.host = host
        self.port = port
        self.prefix = prefix
        self.socket_path = socket_path

    @classmethod
    def parse(cls, text: str | None = None) -> Target:
        """Parse `text`, or `$GARDEN_TARGET`, or the default. A bad target is a ValueError."""
        raw = text or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
        if raw.startswith("unix:") or raw.startswith("/"):
            path = raw.removeprefix("unix:")
            if path.startswith("//"):
                path = path[2:]
            if not path.startswith("/"):
                raise ValueError(f"target {raw!r}: a unix socket needs an absolute path")
            return cls(scheme="http", host="localhost", port=80, socket_path=path)
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ValueError(
                f"target {raw!r}: expected http://HOST:PORT, https://HOST:PORT or unix:/PATH"
            )
        hostport, slash, path = rest.partition("/")
        prefix = ("/" + path).rstrip("/") if slash else ""
        default_port = 443 if scheme == "https" else 80
        if hostport.startswith("["):  # [v6]:port
            host, _, tail = hostport[1:].partition("]")
            port_text = tail.removeprefix(":")
        else:
            host, _, port_text = hostport.partition(":")
        if not host:
            raise ValueError(f"target {raw!r}: no host")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ValueError(f"target {raw!r}: bad port {port_text!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"target {raw!r}: bad port {port}")
        return cls(
            scheme="https" if scheme == "https" else "http", host=host, port=port, prefix=prefix
        )

    @property
    def host_header(self) -> str:
        if self.socket_path:
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL prefix of every route (for httpx; a unix target gets `http://localhost`)."""
        return f"{self.scheme}://{self.host_header}{self.prefix}"

    def __str__(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else self.base_url

    def __repr__(self) -> str:
        return f"Target({self})"


def read_token_file(path: str) -> str:
    """The first token of a token file (the server's `--auth-token-file` format: one token a
    line, blank lines and `#` comments skipped). A ValueError says why there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(64 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"token file {path}: {exc}") from exc
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise ValueError(f"token file {path}: holds no token")


def token_from_env(token: str | None, token_file: str | None = None) -> str | None:
    """The bearer token to send: `token`, else `token_file`'s, else $GARDEN_TOKEN's, else
    that of the file $GARDEN_TOKEN_FILE names; None for none."""
    if token is not None:
        return token or None
    if token_file is not None:
        return read_token_file(token_file)
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = os.environ.get(TOKEN_FILE_ENV)
    return read_token_file(path) if path else None
