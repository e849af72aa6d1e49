"""Bearer-token authentication (`--auth-token-file`): the token file, read at start and again on
SIGHUP, and the ASGI layer that answers 401 `UnauthorizedError` to every request but `GET /ping`
without `Authorization: Bearer <token>`: plain routes, streams, uploads and the terminal
WebSocket alike, before Quart sees the request.

The file holds one token per line (blank lines and `#` comments skipped), so a token can be
rotated without a gap: add the new one, SIGHUP, move the clients, remove the old one, SIGHUP.
A file that others may read or write is refused; tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from typing import Final, final

from garden.config import ConfigError
from garden.errors import UnauthorizedError
from garden.http.refusal import ASGIApp, Receive, Scope, Send, refuse

log = logging.getLogger("garden.http.auth")

OPEN_PATHS: Final = frozenset({"/ping"})
MIN_TOKEN_LENGTH: Final = 16
MAX_TOKEN_FILE: Final = 64 * 1024
CHALLENGE: Final = b'Bearer realm="garden"'


def read_tokens(path: str) -> tuple[bytes, ...]:
    """The tokens of the file at `path`; a ConfigError says why the file cannot be used."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"--auth-token-file {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"--auth-token-file {path}: not a regular file")
        if st.st_mode & 0o007:
            raise ConfigError(
                f"--auth-token-file {path}: others may read or write it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod o= it"
            )
        if st.st_mode & 0o020:
            raise ConfigError(f"--auth-token-file {path}: its group may write it; chmod g-w it")
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE:
        raise ConfigError(f"--auth-token-file {path}: larger than {MAX_TOKEN_FILE} bytes")
    tokens = []
    for raw in data.splitlines():
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if len(line) < MIN_TOKEN_LENGTH or not all(0x21 <= c <= 0x7E for c in line):
            raise ConfigError(
                f"--auth-token-file {path}: a token must be at least {MIN_TOKEN_LENGTH} "
                "printable ASCII characters without spaces"
            )
        tokens.append(line)
    if not tokens:
        raise ConfigError(f"--auth-token-file {path}: holds no token")
    return tuple(tokens)


@final
class TokenFile:
    """The tokens in force; `reload()` rereads the file and keeps the old tokens if it fails."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tokens = read_tokens(path)

    def reload(self) -> bool:
        try:
            tokens = read_tokens(self.path)
        except ConfigError as exc:
            log.warning("auth-reload-failed kept=previous error=%s", exc)
            return False
        self._tokens = tokens
        log.info("auth-reloaded tokens=%d", len(tokens))
        return True

    def accepts(self, authorization: bytes | None) -> bool:
        """Whether an `Authorization` header value carries one of the tokens. Every token is
        compared, in constant time, whatever matched first."""
        if authorization is None:
            return False
        scheme, _, given = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        given = given.strip()
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(given, token)
        return ok


def _authorization(scope: Scope) -> bytes | None:
    found = None
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            if found is not None:
                return None  # two of them: ambiguous, refused
            found = value
    return found


def require_token(app: ASGIApp, tokens: TokenFile) -> ASGIApp:
    """`app` behind the token check (lifespan and `/ping` pass through)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope.get("path") in OPEN_PATHS:
            await app(scope, receive, send)
            return
        if tokens.accepts(_authorization(scope)):
            await app(scope, receive, send)
            return
        client = (scope.get("client") or ("-",))[0]
        log.warning("unauthorized kind=%s path=%s client=%s", kind, scope.get("path", "-"), client)
        error = UnauthorizedError("missing or wrong bearer token (Authorization: Bearer <token>)")
        await refuse(
            scope,
            receive,
            send,
            error,
            headers=((b"www-authenticate", CHALLENGE),),
            close_code=1008,
        )

    return guarded
