"""Files in and out of real containers through the API: round trips (empty, small, 1 GiB,
tars), owners as the container sees them, stopped containers, errors, a full disk, a destroy
during an upload, and every escape we could think of, each checked against a canary
directory on the host that must never change."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.conftest import Server
from tests.integration.test_containers_api import container_id, runc
from tests.unit.linux.test_inroot import snapshot

pytestmark = pytest.mark.root

TAR = {"Content-Type": "application/x-tar"}


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    c = tmp_path / "canary"
    (c / "dir").mkdir(parents=True)
    (c / "hostname").write_text("HOST\n")
    (c / "dir" / "secret").write_text("SECRET\n")
    before = snapshot(c)
    yield c
    assert snapshot(c) == before, "the host outside the container changed"


async def make(server: Server, handle: str, **spec: object) -> str:
    r = await server.client.post("/containers", json={"handle": handle, **spec})
    assert r.status_code == 200, r.text
    return container_id((await server.client.get(f"/containers/{handle}/info")).json())


async def put(server: Server, handle: str, dest: str, body: bytes, **kw: object) -> httpx.Response:
    return await server.client.put(
        f"/containers/{handle}/files", params={"destination": dest, **kw}, content=body
    )


async def get(server: Server, handle: str, source: str, **kw: object) -> httpx.Response:
    return await server.client.get(f"/containers/{handle}/files", params={"source": source, **kw})


def inside(server: Server, cid: str, *cmd: str) -> str:
    out = runc(server, "exec", cid, *cmd)
    assert out.returncode == 0, out.stderr
    return out.stdout


def tar_of(add: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in add:
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, link, 1_600_000_000
    return info


@pytest.mark.parametrize("privileged", [False, True])
async def test_round_trips_and_owners_as_seen_inside(server: Server, privileged: bool) -> None:
    cid = await make(server, "rt", privileged=privileged)
    for dest, body in [("/empty", b""), ("/tmp/a/b/small", b"hello\x00world" * 100)]:
        assert (await put(server, "rt", dest, body)).status_code == 200
        r = await get(server, "rt", dest)
        assert r.status_code == 200
        assert r.content == body
        assert r.headers["Content-Length"] == str(len(body))
    assert inside(server, cid, "stat", "-c", "%u %g %a", "/tmp/a/b/small").split() == [
        "0",
        "0",
        "644",
    ]
    assert inside(server, cid, "stat", "-c", "%u %a", "/tmp/a").split() == ["0", "755"]
    # A user of the container's /etc/passwd; a relative path is relative to its home.
    r = await put(server, "rt", "notes/today", b"vcap's", user="vcap")
    assert r.status_code == 200, r.text
    assert inside(server, cid, "cat", "/home/vcap/notes/today") == "vcap's"
    assert inside(server, cid, "stat", "-c", "%u %g", "/home/vcap/notes/today").split() == [
        "1000",
        "1000",
    ]
    assert inside(server, cid, "stat", "-c", "%u", "/home/vcap/notes").strip() == "1000"
    assert (await get(server, "rt", "notes/today", user="vcap")).content == b"vcap's"
    r = await put(server, "rt", "/x", b"", user="nosuchuser")
    assert r.status_code == 400
    # What processes of the container write can be read back.
    inside(server, cid, "sh", "-c", "echo from-inside > /tmp/made")
    assert (await get(server, "rt", "/tmp/made")).content == b"from-inside\n"


async def test_stopped_container_files(server: Server) -> None:
    await make(server, "st")
    assert (await server.client.put("/containers/st/stop", json={"kill": True})).status_code == 200
    assert (await put(server, "st", "/after-stop", b"still works")).status_code == 200
    assert (await get(server, "st", "/after-stop")).content == b"still works"


async def test_tar_round_trip(server: Server) -> None:
    cid = await make(server, "tars")
    archive = tar_of(
        [
            (entry("./", tarfile.DIRTYPE, 0o755), None),
            (entry("app", tarfile.DIRTYPE, 0o750), None),
            (entry("app/bin", tarfile.DIRTYPE, 0o755), None),
            (entry("app/bin/run", mode=0o755), b"#!/bin/sh\necho ran\n"),
            (entry("app/data/deep/" + "n" * 150, mode=0o600), b"long name"),
            (entry("app/current", tarfile.SYMTYPE, link="bin/run"), None),
            (entry("app/abs", tarfile.SYMTYPE, link="/app/bin"), None),
            (entry("app/again", tarfile.LNKTYPE, link="app/bin/run"), None),
            (entry("app/empty", tarfile.DIRTYPE, 0o700), None),
        ]
    )
    r = await server.client.put(
        "/containers/tars/files", params={"destination": "/srv"}, content=archive, headers=TAR
    )
    assert r.status_code == 200, r.text
    assert inside(server, cid, "/srv/app/current") == "ran\n"
    assert inside(server, cid, "stat", "-c", "%a %u", "/srv/app").split() == ["750", "0"]
    r = await get(server, "tars", "/srv/app")
    assert r.headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as t:
        got = {m.name: m for m in t.getmembers()}
        run = t.extractfile("app/bin/run")
        assert run is not None and run.read() == b"#!/bin/sh\necho ran\n"
    assert got["app"].mode == 0o750 and got["app"].isdir()
    assert got["app/bin/run"].mode == 0o755
    assert got["app/data/deep/" + "n" * 150].mode == 0o600
    assert got["app/current"].linkname == "bin/run"
    assert got["app/abs"].linkname == "/app/bin"
    assert got["app/again"].islnk() or got["app/bin/run"].islnk()
    assert got["app/empty"].isdir()
    # The same tree again, as contents ("./..."), unpacked elsewhere: identical listing.
    r = await get(server, "tars", "/srv/app/")
    assert r.status_code == 200
    r2 = await server.client.put(
        "/containers/tars/files", params={"destination": "/copy"}, content=r.content, headers=TAR
    )
    assert r2.status_code == 200, r2.text
    listing = "find /srv/app /copy -exec stat -c '%n %a %s' {} + | sed 's#^/srv/app#X#;s#^/copy#X#'"
    out = inside(server, cid, "sh", "-c", listing).splitlines()
    assert sorted(out[: len(out) // 2]) == sorted(out[len(out) // 2 :])


async def test_errors(server: Server) -> None:
    await make(server, "err")
    r = await get(server, "err", "/no/such/file")
    assert (r.status_code, r.json()["type"]) == (404, "FileNotFoundError")
    r = await put(server, "err", "/tmp", b"x")
    assert (r.status_code, r.json()["type"]) == (409, "ConflictError")
    r = await put(server, "err", "/etc/passwd/below", b"x")
    assert r.status_code == 409
    r = await server.client.put(
        "/containers/err/files", params={"destination": "/t"}, content=b"junk" * 300, headers=TAR
    )
    assert (r.status_code, r.json()["type"]) == (400, "InvalidRequestError")
    for path in ["/proc/self/status", "/proc/1/environ", "/sys/kernel"]:
        r = await get(server, "err", path)
        assert r.status_code in (400, 404), (path, r.text)
    r = await put(server, "err", "/proc/sys/kernel/core_pattern", b"|/tmp/evil")
    assert r.status_code == 400, r.text
    r = await put(server, "err", "/sys/fs/new", b"x")
    assert r.status_code == 400, r.text
    r = await get(server, "nope", "/etc/passwd")
    assert (r.status_code, r.json()["type"]) == (404, "ContainerNotFoundError")


async def test_escapes_leave_the_host_untouched(server: Server, canary: Path) -> None:
    cid = await make(server, "esc")
    c = str(canary)
    # Links planted by the container's own processes, pointing at host paths.
    inside(server, cid, "ln", "-s", c, "/hostdir")
    inside(server, cid, "ln", "-s", f"{c}/hostname", "/hostfile")
    inside(server, cid, "ln", "-s", "/", "/rootlink")
    inside(server, cid, "ln", "-s", "../../../../../../..", "/up")
    inside(server, cid, "mkdir", "-p", c)  # so that the host's path exists inside, too
    writes = [
        "/hostdir/hostname",
        "/hostdir/dir/secret",
        "/hostfile",
        f"/rootlink{c}/hostname",
        f"/up{c}/dir/secret",
        f"/../../../../..{c}/hostname",
        f"../../../../..{c}/new",
    ]
    for dest in writes:
        r = await put(server, "esc", dest, b"EVIL")
        assert r.status_code == 200, (dest, r.text)
    assert inside(server, cid, "cat", f"{c}/hostname") == "EVIL"
    for source in [f"{c}/dir/secret", "/hostdir/dir/secret", f"/up{c}/dir/secret"]:
        r = await get(server, "esc", source)
        assert r.content == b"EVIL", source  # the container's own copy, never the host's
    r = await get(server, "esc", "/proc/1/root/etc/passwd")  # a magic link in its procfs
    assert r.status_code == 400
    # A directory with a link to the host streams as a link, not what it points at.
    r = await get(server, "esc", "/")
    with tarfile.open(fileobj=io.BytesIO(r.content)) as t:
        names = {m.name: m for m in t.getmembers()}
    assert names["./hostdir"].issym() and names["./hostdir"].linkname == c
    assert not any(n.startswith("./proc/") or n.startswith("./hostdir/") for n in names)
    # Tars: names climbing out, absolute names, links out.
    bad = [
        [(entry("../escape"), b"x")],
        [(entry("a/../../escape"), b"x")],
        [(entry("h", tarfile.LNKTYPE, link="../../../../" + c + "/hostname"), None)],
    ]
    for members in bad:
        r = await server.client.put(
            "/containers/esc/files",
            params={"destination": "/t"},
            content=tar_of(members),
            headers=TAR,
        )
        assert r.status_code == 400, r.text
    good = [
        (entry(f"{c}/hostname"), b"EVIL-ABS"),  # absolute: under the destination
        (entry("out", tarfile.SYMTYPE, link=c), None),
        (entry("out/dir/secret"), b"EVIL-VIA-LINK"),  # through a link: inside the container
        (entry("hl", tarfile.LNKTYPE, link=f"{c}/hostname"), None),  # resolved in the container
    ]
    r = await server.client.put(
        "/containers/esc/files", params={"destination": "/t"}, content=tar_of(good), headers=TAR
    )
    assert r.status_code == 200, r.text
    assert inside(server, cid, "cat", f"/t{c}/hostname") == "EVIL-ABS"
    assert inside(server, cid, "cat", f"{c}/dir/secret") == "EVIL-VIA-LINK"
    assert inside(server, cid, "cat", "/t/hl") == "EVIL-ABS"


async def test_full_disk_is_507_and_leaves_nothing(server: Server, state_dir: Path) -> None:
    # Not under pytest's tmp dir: the container's mapped root must traverse to the mount source.
    small = state_dir.parent / "small"
    small.mkdir()
    await trio.run_process(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "gtest", str(small)])
    try:
        await make(
            server,
            "full",
            bind_mounts=[{"src_path": str(small), "dst_path": "/small", "mode": "RW"}],
        )
        (small / "keep").write_bytes(b"k" * 1000)
        r = await put(server, "full", "/small/big", os.urandom(3 << 20))
        assert r.status_code == 507, r.text
        assert r.json()["type"] == "DiskLimitExceededError"
        assert "disk" in r.json()["message"]
        assert sorted(os.listdir(small)) == ["keep"]  # no half-written file, no temporary

        async def chunked() -> AsyncIterator[bytes]:  # no length: fails while writing
            for _ in range(48):
                yield b"z" * (64 << 10)

        r = await put(server, "full", "/small/big", chunked())  # type: ignore[arg-type]
        assert r.status_code == 507, r.text
        assert sorted(os.listdir(small)) == ["keep"]
        archive = tar_of([(entry("a"), b"1"), (entry("b"), os.urandom(3 << 20))])
        r = await server.client.put(
            "/containers/full/files",
            params={"destination": "/small/t"},
            content=archive,
            headers=TAR,
        )
        assert r.status_code == 507
        assert not any(".garden-" in n for n in os.listdir(small / "t"))
        assert (await server.client.delete("/containers/full")).status_code == 200
    finally:
        with trio.CancelScope(shield=True):
            await trio.run_process(["umount", "-l", str(small)], check=False)


async def test_the_containers_disk_limit_is_507(server: Server) -> None:
    await make(server, "limited", limits={"disk": {"byte_hard": 8 << 20}})
    r = await put(server, "limited", "/fits", os.urandom(2 << 20))
    assert r.status_code == 200, r.text
    r = await put(server, "limited", "/too-big", os.urandom(16 << 20))
    assert (r.status_code, r.json()["type"]) == (507, "DiskLimitExceededError"), r.text

    async def chunked() -> AsyncIterator[bytes]:  # no length: the limit is met while writing
        for _ in range(256):
            yield os.urandom(64 << 10)

    r = await put(server, "limited", "/tmp/too-big", chunked())  # type: ignore[arg-type]
    assert r.status_code == 507, r.text
    r = await get(server, "limited", "/")
    with tarfile.open(fileobj=io.BytesIO(r.content)) as t:
        names = [m.name for m in t.getmembers()]
    assert "./fits" in names
    assert not any("too-big" in n or n.endswith(".tmp") for n in names)  # no temporaries


async def test_destroy_during_an_upload(server: Server) -> None:
    cid = await make(server, "busy")
    path = Path((await server.client.get("/containers/busy/info")).json()["container_path"])
    first_sent, release = trio.Event(), trio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * (4 << 20)
        first_sent.set()
        await release.wait()
        yield b"never written"

    answers: list[httpx.Response] = []

    async def upload() -> None:
        answers.append(await put(server, "busy", "/tmp/partial", body()))  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload)
        await first_sent.wait()
        r = await server.client.delete("/containers/busy")
        assert r.status_code == 200, r.text
        assert not path.exists()
        release.set()
    assert answers[0].status_code == 404, answers[0].text
    assert "destroyed" in answers[0].json()["message"]
    assert cid


@pytest.mark.slow
async def test_one_gib_round_trip(server: Server, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl to stream 1 GiB from and to files")
    await make(server, "big")
    src, back = tmp_path / "src.bin", tmp_path / "back.bin"
    want = hashlib.sha256()
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(1024):
            chunk = block[i:] + block[:i]
            want.update(chunk)
            f.write(chunk)
    url = f"{server.url}/containers/big/files"
    up = await trio.run_process(
        ["curl", "-sS", "--fail", "-H", "Expect:", "-T", str(src), f"{url}?destination=/big.bin"],
        capture_stdout=True,
    )
    assert up.stdout == b"{}"
    await trio.run_process(["curl", "-sS", "--fail", "-o", str(back), f"{url}?source=/big.bin"])
    got = hashlib.sha256()
    with open(back, "rb") as f:
        while chunk := f.read(1 << 20):
            got.update(chunk)
    assert got.hexdigest() == want.hexdigest()
