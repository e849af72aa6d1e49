"""Containers from a real Debian image: the minbase tarball of the host's release that
scripts/setup.sh builds once with mmdebstrap (no test reaches a mirror), made into a two-layer
image the way users have them (a docker archive, and the same layers as an OCI layout), created
through the API and running Debian's own programs: bash, dpkg-query, coreutils, sed, perl, as
the image's user in its WorkingDir with its Env.

The tarball must be there: without it the test fails and says to run setup, unless
GARDEN_SKIP_MINBASE=1 says setup was told not to build it (then it skips, saying so)."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.imagebuild import (
    Entry,
    Image,
    layer_digest,
    layer_tar,
    write_docker_archive,
    write_oci_layout,
)
from tests.integration.conftest import Server
from tests.integration.test_images import _events, create
from tests.integration.test_processes_api import exit_status, output, run

pytestmark = pytest.mark.root

MINBASE = Path(os.environ.get("GARDEN_MINBASE_TAR", "/var/cache/garden-trio/debian-minbase.tar"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Minbase:
    """The tarball and what the tests compare the container with, read from it."""

    tar: Path
    debian_version: str
    packages: list[str]  # installed, sorted
    passwd: bytes
    group: bytes


def _read_minbase(path: Path) -> Minbase:
    wanted = {"./etc/debian_version", "./var/lib/dpkg/status", "./etc/passwd", "./etc/group"}
    found: dict[str, bytes] = {}
    with tarfile.open(path) as tf:
        for member in tf:
            if member.name in wanted:
                f = tf.extractfile(member)
                assert f is not None, member.name
                found[member.name] = f.read()
    assert set(found) == wanted, f"{path} lacks {wanted - set(found)}"
    packages = [
        para.split("\n", 1)[0].removeprefix("Package: ")
        for para in found["./var/lib/dpkg/status"].decode().split("\n\n")
        if para.startswith("Package: ") and "\nStatus: install ok installed" in para
    ]
    return Minbase(
        tar=path,
        debian_version=found["./etc/debian_version"].decode(),
        packages=sorted(packages),
        passwd=found["./etc/passwd"],
        group=found["./etc/group"],
    )


@pytest.fixture(scope="module")
def minbase() -> Minbase:
    if not MINBASE.is_file():
        if os.environ.get("GARDEN_SKIP_MINBASE") == "1":
            pytest.skip(f"GARDEN_SKIP_MINBASE=1: setup did not build {MINBASE}")
        pytest.fail(
            f"{MINBASE} is missing: run scripts/setup.sh (it builds it once with mmdebstrap), "
            "or set GARDEN_SKIP_MINBASE=1 on a machine that cannot reach a Debian mirror"
        )
    return _read_minbase(MINBASE)


def app_image(base: Minbase) -> Image:
    """The minbase tarball as it is, and a layer on top of it: a user `app`, its working dir,
    a program of its own, and /etc/motd whited out."""
    top = layer_tar(
        [
            Entry("etc", "dir", mode=0o755),
            Entry("etc/passwd", data=base.passwd + b"app:x:1001:1001:app:/home/app:/bin/bash\n"),
            Entry("etc/group", data=base.group + b"app:x:1001:\n"),
            Entry("etc/.wh.motd"),
            Entry("home", "dir", mode=0o755),
            Entry("home/app", "dir", mode=0o755, uid=1001, gid=1001),
            Entry("srv", "dir", mode=0o755),
            Entry("srv/app", "dir", mode=0o755, uid=1001, gid=1001),
            Entry("usr", "dir", mode=0o755),
            Entry("usr/local", "dir", mode=0o755),
            Entry("usr/local/bin", "dir", mode=0o755),
            Entry(
                "usr/local/bin/hello",
                data=b'#!/bin/bash\necho "hello $GREETING from Debian $(</etc/debian_version)"\n',
                mode=0o755,
            ),
        ]
    )
    return Image(
        [base.tar, top],
        env=[f"PATH={PATH}", "GREETING=hallo", "LANG=C.UTF-8"],
        working_dir="/srv/app",
        user="app",
    )


async def bash(server: Server, handle: str, script: str, **spec: object) -> tuple[int, str, str]:
    payloads = await run(server, handle, {"path": "/bin/bash", "args": ["-c", script], **spec})
    return (
        exit_status(payloads),
        output(payloads, "stdout").decode(),
        output(payloads, "stderr").decode(),
    )


async def test_containers_from_a_debian_minbase_image(
    server: Server, minbase: Minbase, tmp_path: Path
) -> None:
    image = app_image(minbase)
    archive = tmp_path / "debian.tar"
    write_docker_archive(archive, {"garden/debian:app": image})
    handle = await create(server, rootfs=f"docker-archive://{archive}:garden/debian:app")

    status, out, err = await bash(server, handle, "cat /etc/debian_version")
    assert (status, out, err) == (0, minbase.debian_version, "")

    status, out, err = await bash(server, handle, "dpkg-query -W -f='${Package}\\n' | sort")
    assert status == 0, err
    assert out.split() == minbase.packages
    assert {"bash", "coreutils", "dpkg", "perl-base", "sed"} <= set(out.split())

    # the image's User, WorkingDir and Env; its own program on its PATH; the whiteout
    status, out, err = await bash(
        server, handle, 'id; pwd; echo "$GREETING $LANG"; hello; test -e /etc/motd || echo gone'
    )
    assert status == 0, err
    assert out.splitlines() == [
        "uid=1001(app) gid=1001(app) groups=1001(app)",
        "/srv/app",
        "hallo C.UTF-8",
        f"hello hallo from Debian {minbase.debian_version.strip()}",
        "gone",
    ]

    # Debian's programs at work: a file written by one, read back by others and by the API
    status, out, err = await bash(
        server,
        handle,
        "printf 'b\\na\\nc\\n' | sort | sed 's/^/line-/' > notes.txt && "
        "perl -ne 'print uc' notes.txt && stat -c '%U %s' notes.txt && "
        "tar -czf notes.tgz notes.txt && tar -tzf notes.tgz && grep -c line- notes.txt",
    )
    assert status == 0, err
    assert out.splitlines() == ["LINE-A", "LINE-B", "LINE-C", "app 21", "notes.txt", "3"]
    r = await server.client.get(
        f"/containers/{handle}/files", params={"source": "/srv/app/notes.txt"}
    )
    assert (r.status_code, r.content) == (200, b"line-a\nline-b\nline-c\n")

    # a user the process names wins over the image's
    status, out, err = await bash(server, handle, "id -u; whoami", user="root")
    assert (status, out) == (0, "0\nroot\n"), err

    # The same layers as an OCI layout (another image: another config): nothing unpacked again.
    write_oci_layout(tmp_path / "layout", {"v2": image}, compress="none")
    other = await create(server, rootfs=f"oci://{tmp_path}/layout:v2", env=["GREETING=hej"])
    status, out, err = await bash(server, other, "hello")
    assert (status, out) == (0, f"hello hej from Debian {minbase.debian_version}"), err
    unpacked = await _events(server, "LayerUnpacked")
    assert sorted(e["diff_id"] for e in unpacked) == sorted(
        layer_digest(layer) for layer in image.layers
    )

    listing = (await server.client.get("/images")).json()
    assert len(listing["images"]) == 2
    base = next(x for x in listing["layers"] if x["diff_id"] == layer_digest(minbase.tar))
    assert base["in_use"] == 2 and base["size"] > 50 << 20, base


def test_minbase_reader_sees_installed_packages_only() -> None:
    status = (
        b"Package: a\nStatus: install ok installed\n\n"
        b"Package: b\nStatus: deinstall ok config-files\n\n"
        b"Package: c\nStatus: install ok installed\n"
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in [
            ("./etc/debian_version", b"12.0\n"),
            ("./var/lib/dpkg/status", status),
            ("./etc/passwd", b""),
            ("./etc/group", b""),
        ]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    path = Path(f"/tmp/garden-minbase-reader-{os.getpid()}.tar")
    path.write_bytes(buf.getvalue())
    try:
        assert _read_minbase(path).packages == ["a", "c"]
    finally:
        path.unlink()
