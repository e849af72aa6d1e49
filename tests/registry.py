"""A local image registry for tests and benchmarks: Debian's `docker-registry` on a free port
of 127.0.0.1 with its storage and log in a directory of the caller's, images pushed to it with
skopeo over plain http, and its access log read to count what was pulled."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import trio

from tests.services import free_port, wait_answering

TOOLS = ("docker-registry", "skopeo")


def missing_tool() -> str:
    """The first program a local registry needs that is not installed ('' when none)."""
    return next((t for t in TOOLS if shutil.which(t) is None), "")


@contextmanager
def running_registry(root: Path, login: tuple[str, str] | None = None) -> Iterator[Registry]:
    """A started `Registry` under `root` for the block; the test is skipped (saying why) where
    Debian's docker-registry or skopeo is missing."""
    import pytest

    if tool := missing_tool():
        pytest.skip(f"needs {tool} (scripts/setup.sh installs Debian's {tool} package)")
    reg = Registry(root, login=login)
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


def bcrypt(password: str) -> str:
    """A bcrypt hash (the only kind docker-registry's htpasswd takes), by the C library's crypt;
    cost 4, as a test needs no more."""
    import ctypes
    import ctypes.util

    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt_gensalt.restype = ctypes.c_char_p
    salt = lib.crypt_gensalt(b"$2b$", 4, None, 0)
    hashed = lib.crypt(password.encode(), salt)
    assert hashed and hashed.startswith(b"$2b$"), hashed
    return str(hashed.decode())


class Registry:
    """A `docker-registry` on 127.0.0.1, its storage and its log in a temp dir."""

    def __init__(self, root: Path, login: tuple[str, str] | None = None) -> None:
        """`login`: (user, password) the registry demands (htpasswd basic auth)."""
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = root / "registry.log"
        self.login = login
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.root / "config.yml"
        auth = ""
        if self.login is not None:
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text(f"{self.login[0]}:{bcrypt(self.login[1])}\n")
            auth = f"auth:\n  htpasswd:\n    realm: garden-tests\n    path: {htpasswd}\n"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            f"http:\n  addr: {self.host}\n  secret: garden-trio-tests\n" + auth
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_answering(
            f"http://{self.host}/v2/", {200, 401}, self.proc, self.log, timeout=10.0,
            what="docker-registry",
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def push(self, layout: Path, tag: str, name: str, ref: str) -> None:
        """Push the layout's image `tag` as `name:ref` (skopeo, plain http)."""
        creds = [f"--dest-creds={self.login[0]}:{self.login[1]}"] if self.login else []
        await trio.run_process(
            [
                "skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                *creds, f"oci:{layout}:{tag}", f"docker://{self.host}/{name}:{ref}",
            ],
            capture_stdout=True,
            capture_stderr=True,
        )  # fmt: skip

    def layers(self, name: str, ref: str) -> list[str]:
        """The layer blob digests of `name:ref`, from the registry's manifest."""
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        r = httpx.get(
            f"http://{self.host}/v2/{name}/manifests/{ref}", headers=accept, auth=self.login
        )
        return [layer["digest"] for layer in r.json()["layers"]]

    def blob_gets(self, name: str) -> list[str]:
        """The digests of the blobs of `name` fetched with GET so far (the access log)."""
        pattern = re.compile(rf'"GET /v2/{re.escape(name)}/blobs/(sha256:[0-9a-f]{{64}}) HTTP')
        return pattern.findall(self.log.read_text(errors="replace"))

    def manifest_gets(self, name: str) -> list[str]:
        """The references (tags, digests) of `name` whose manifest was fetched so far."""
        pattern = re.compile(rf'"GET /v2/{re.escape(name)}/manifests/([^ "]+) HTTP')
        return pattern.findall(self.log.read_text(errors="replace"))

    async def settled_manifest_gets(self, name: str) -> list[str]:
        await self.settled_blob_gets(name)
        return self.manifest_gets(name)

    async def settled_blob_gets(self, name: str) -> list[str]:
        """`blob_gets` once the log has caught up: a marker request made now is logged after
        every request already answered."""
        marker = f"/v2/?marker={time.monotonic_ns()}"
        async with httpx.AsyncClient(base_url=f"http://{self.host}", auth=self.login) as c:
            assert (await c.get(marker)).status_code == 200
        with trio.fail_after(10):
            while marker not in self.log.read_text(errors="replace"):
                await trio.sleep(0.02)  # the registry writes its access log after answering
        return self.blob_gets(name)
