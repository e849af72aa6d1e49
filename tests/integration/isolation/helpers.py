"""Running commands in a container through the API and reading what they print; building and
copying in the static syscall probe (probe.c)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Server

PROBE_SOURCE = Path(__file__).with_name("probe.c")


class Ran:
    def __init__(self, payloads: list[dict[str, Any]]) -> None:
        self.stdout = b"".join(
            base64.b64decode(p["data"]) for p in payloads if p.get("source") == "stdout"
        )
        self.stderr = b"".join(
            base64.b64decode(p["data"]) for p in payloads if p.get("source") == "stderr"
        )
        self.exit_status = int(payloads[-1]["exit_status"])

    @property
    def text(self) -> str:
        return self.stdout.decode()


async def create(server: Server, handle: str, **spec: Any) -> dict[str, Any]:
    r = await server.client.post("/containers", json={"handle": handle, **spec})
    assert r.status_code == 200, r.text
    info = await server.client.get(f"/containers/{handle}/info")
    assert info.status_code == 200, info.text
    result: dict[str, Any] = info.json()
    return result


async def run(server: Server, handle: str, *argv: str, **spec: Any) -> Ran:
    """Run argv[0] with argv[1:] (as root unless `user` says otherwise; None: the default)."""
    body = {"path": argv[0], "args": list(argv[1:]), "user": "root", **spec}
    if body["user"] is None:
        del body["user"]
    async with server.client.stream(
        "POST", f"/containers/{handle}/processes", json=body, params={"encoding": "base64"}
    ) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        payloads = [json.loads(line) async for line in r.aiter_lines() if line]
    return Ran(payloads)


async def sh(server: Server, handle: str, script: str, **spec: Any) -> Ran:
    return await run(server, handle, "sh", "-c", script, **spec)


def status_fields(text: str) -> dict[str, str]:
    """The `Name:\tvalue` lines of /proc/<pid>/status."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out[name] = value.strip()
    return out


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """probe.c built as a static binary (the busybox rootfs has no libc to link against)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip(
            "needs gcc and libc6-dev to build the static syscall probe (setup.sh installs them)"
        )
    out = tmp_path_factory.mktemp("probe") / "probe"
    built = subprocess.run(
        [gcc, "-static", "-O2", "-o", str(out), str(PROBE_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0 and "cannot find -lc" in built.stderr:
        pytest.skip("needs a static libc (libc6-dev) to build the syscall probe")
    assert built.returncode == 0, built.stderr
    return out


async def install_probe(server: Server, handle: str, probe: Path) -> str:
    """Copy the probe into the container through the files route; its path inside."""
    r = await server.client.put(
        f"/containers/{handle}/files",
        params={"destination": "/tmp/probe"},
        content=probe.read_bytes(),
    )
    assert r.status_code == 200, r.text
    assert (await run(server, handle, "chmod", "0755", "/tmp/probe")).exit_status == 0
    return "/tmp/probe"


async def probe_results(
    server: Server, handle: str, *names: str, user: str = "root"
) -> dict[str, str]:
    """name -> "<return value> <errno name>" for each attempt the probe made."""
    ran = await run(server, handle, "/tmp/probe", *names, user=user)
    assert ran.exit_status == 0, ran.stderr
    out: dict[str, str] = {}
    for line in ran.text.splitlines():
        name, _, rest = line.partition(" ")
        out[name] = rest
    return out
