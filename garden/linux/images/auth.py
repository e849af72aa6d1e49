"""Registry credentials of the server (`--registry-auth-file`): a Docker `config.json`'s `auths`
object, `{"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}` (or `"username"` and
`"password"` instead of `"auth"`), as `docker login` writes it. Keys may carry a scheme and a
path (`https://index.docker.io/v1/`); Docker Hub's names all mean `registry-1.docker.io`.

The file is read when the server starts (a bad file stops it) and again whenever its
modification time changes, so rotating a password needs no restart. Credentials are never
logged nor put in a message; `repr` shows the registries only.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from typing import final

DOCKER_HUB = "registry-1.docker.io"
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", DOCKER_HUB})


class AuthFileError(ValueError):
    """The auth file cannot be read or is not a Docker config with usable `auths`."""


def registry_key(name: str) -> str:
    """`https://index.docker.io/v1/` -> `registry-1.docker.io`; `http://h:5000/x` -> `h:5000`."""
    host = name.split("://", 1)[-1].split("/", 1)[0].strip().lower()
    return DOCKER_HUB if host in HUB_ALIASES else host


def parse_auths(data: bytes, path: str = "") -> dict[str, tuple[str, str]]:
    """The (user, password) of each registry of a Docker config's `auths`."""
    where = path or "the registry auth file"
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise AuthFileError(f"{where}: not JSON: {e}") from e
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise AuthFileError(f'{where}: no "auths" object (Docker\'s config.json format)')
    out: dict[str, tuple[str, str]] = {}
    for name, entry in auths.items():
        if not isinstance(entry, dict):
            raise AuthFileError(f"{where}: the entry of {name!r} is not an object")
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                text = base64.b64decode(entry["auth"], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as e:
                raise AuthFileError(f"{where}: the auth of {name!r} is not base64 text") from e
            user, colon, password = text.partition(":")
            if not colon:
                raise AuthFileError(f"{where}: the auth of {name!r} is not user:password")
        elif isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            user, password = entry["username"], entry["password"]
        elif entry.get("identitytoken"):
            raise AuthFileError(
                f"{where}: {name!r} has an identitytoken (OAuth refresh token): not supported, "
                "give its user and password instead"
            )
        else:
            raise AuthFileError(f"{where}: {name!r} has no auth nor username and password")
        out[registry_key(name)] = (user, password)
    return out


@final
class RegistryAuth:
    """The credentials of the auth file at `path` (none when `path` is empty), reloaded when
    the file changes. Thread-safe (pulls run in worker threads)."""

    def __init__(self, path: str = "") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._creds: dict[str, tuple[str, str]] = {}
        if path:
            self._load()

    def __repr__(self) -> str:
        return f"RegistryAuth(path={self.path!r}, registries={sorted(self._creds)!r})"

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            with open(self.path, "rb") as f:
                data = f.read(1 << 20)
        except OSError as e:
            raise AuthFileError(f"{self.path}: {e.strerror}") from e
        self._creds = parse_auths(data, self.path)
        self._stamp = stamp

    def credentials(self, registry: str) -> tuple[str, str] | None:
        """(user, password) for `registry` (`host[:port]`), or None."""
        if not self.path:
            return None
        with self._lock:
            try:
                self._load()
            except AuthFileError:
                pass  # a file broken while the server runs: keep the credentials last read
            return self._creds.get(registry_key(registry))

    def basic(self, registry: str) -> str | None:
        """The `Authorization: Basic …` value for `registry`, or None."""
        creds = self.credentials(registry)
        if creds is None:
            return None
        return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
