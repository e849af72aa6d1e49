"""The `garden` command as a user runs it (`.venv/bin/garden` as a subprocess) against a real
server on the real kernel: what it prints, what it does, and the exit codes scripts rely on."""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import tarfile
import time
from pathlib import Path

import pytest
import trio

from tests.integration.conftest import Server

pytestmark = pytest.mark.root

GARDEN = str(Path(sys.executable).parent / "garden")


class Ran:
    def __init__(self, code: int, out: bytes, err: bytes) -> None:
        self.code = code
        self.out = out
        self.err = err

    @property
    def text(self) -> str:
        return self.out.decode()


async def garden(server: Server, *argv: str, stdin: bytes | None = None) -> Ran:
    done = await trio.run_process(
        [GARDEN, *argv],
        stdin=stdin if stdin is not None else b"",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "GARDEN_TARGET": server.url},
    )
    return Ran(done.returncode, done.stdout, done.stderr)


async def served(server: Server, method: str, path: str) -> bool:
    """Whether this branch's server has the route (files, limits and net are being built on
    other branches; their CLI tests run as soon as the routes land)."""
    r = await server.client.request(method, path)
    return not (r.status_code in (404, 405) and r.json()["type"].startswith(("Route", "Method")))


async def test_container_life_cycle_and_exit_codes(server: Server) -> None:
    made = await garden(server, "create", "--handle", "cli-one", "-p", "team=a", "-e", "X=1")
    assert (made.code, made.text) == (0, "cli-one\n"), made.err
    other = await garden(server, "create")
    assert other.code == 0 and other.text.strip()
    handle = other.text.strip()

    listed = await garden(server, "list", "--json")
    assert listed.code == 0
    assert sorted(json.loads(listed.out)["handles"]) == sorted(["cli-one", handle])
    assert (await garden(server, "list", "-p", "team=a")).text == "cli-one\n"

    info = await garden(server, "info", "--json", "cli-one")
    assert json.loads(info.out)["state"] == "active"
    assert "state           active" in (await garden(server, "info", "cli-one")).text

    assert (await garden(server, "property", "set", "cli-one", "owner", "ops")).code == 0
    assert (await garden(server, "property", "get", "cli-one", "owner")).text == "ops\n"
    assert (await garden(server, "property", "rm", "cli-one", "owner")).code == 0
    missing = await garden(server, "property", "get", "cli-one", "owner")
    assert missing.code == 1 and b"PropertyNotFoundError" in missing.err

    dup = await garden(server, "create", "--handle", "cli-one")
    assert dup.code == 1
    assert dup.err == b"garden: HandleInUseError: handle 'cli-one' already in use\n"
    assert (await garden(server, "create", "--bogus")).code == 2
    assert (await garden(server, "destroy", "cli-one")).code == 0
    gone = await garden(server, "destroy", "cli-one")
    assert gone.code == 1 and b"ContainerNotFoundError: unknown handle: cli-one" in gone.err
    assert (await garden(server, "destroy", handle)).code == 0
    assert json.loads((await garden(server, "list", "--json")).out) == {"handles": []}


async def test_run_streams_and_exits_with_the_process_status(server: Server) -> None:
    assert (await garden(server, "create", "--handle", "cli-run")).code == 0
    hi = await garden(server, "run", "cli-run", "--", "echo", "hi")
    assert (hi.code, hi.out, hi.err) == (0, b"hi\n", b"")
    both = await garden(
        server, "run", "cli-run", "--", "sh", "-c", "echo out; echo err >&2; exit 7"
    )
    assert (both.code, both.out, both.err) == (7, b"out\n", b"err\n")
    raw = await garden(server, "run", "cli-run", "--", "sh", "-c", r"printf '\377\000\n'")
    assert raw.out == b"\xff\x00\n"
    piped = await garden(server, "run", "-i", "cli-run", "--", "cat", stdin=b"through stdin\n")
    assert (piped.code, piped.out) == (0, b"through stdin\n")
    absent = await garden(server, "run", "cli-run", "--", "no-such-program")
    assert absent.code == 1 and b"ExecutableNotFoundError" in absent.err

    detached = await garden(server, "run", "-d", "cli-run", "--", "sh", "-c", "echo later; exit 3")
    assert detached.code == 0
    attached = await garden(server, "attach", "cli-run", detached.text.strip())
    assert (attached.code, attached.out) == (3, b"later\n")


async def test_terminal(server: Server) -> None:
    assert (await garden(server, "create", "--handle", "cli-tty")).code == 0
    master, slave = os.openpty()
    output = bytearray()

    def read_all() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the last holder of the slave side exited
                return
            if not data:
                return
            output.extend(data)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, read_all)
            done = await trio.run_process(
                [GARDEN, "run", "-it", "cli-tty", "--", "sh", "-c", "tty; exit 4"],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                check=False,
                env={**os.environ, "GARDEN_TARGET": server.url},
            )
            os.close(slave)
            slave = -1
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert done.returncode == 4
    assert b"/dev/pts/" in output


async def test_files(server: Server, tmp_path: Path) -> None:
    assert (await garden(server, "create", "--handle", "cli-files")).code == 0
    if not await served(server, "GET", "/containers/cli-files/files?source=/"):
        pytest.skip("the files routes are not on this branch yet")
    assert (
        await garden(server, "stream-in", "cli-files", "--destination", "/tmp/a", stdin=b"A")
    ).code == 0
    assert (await garden(server, "stream-out", "cli-files", "--source", "/tmp/a")).out == b"A"
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(b"deep")
    assert (await garden(server, "stream-in", "cli-files", "-d", "/tmp/t", str(tree))).code == 0
    back = tmp_path / "back"
    # A trailing slash streams the directory's contents; without it, the directory itself.
    assert (await garden(server, "stream-out", "cli-files", "-s", "/tmp/t/", str(back))).code == 0
    assert (back / "sub" / "f").read_bytes() == b"deep"
    named = tmp_path / "named"
    assert (await garden(server, "stream-out", "cli-files", "-s", "/tmp/t", str(named))).code == 0
    assert (named / "t" / "sub" / "f").read_bytes() == b"deep"
    listing = await garden(server, "stream-out", "cli-files", "-s", "/tmp/t")  # to stdout
    with tarfile.open(fileobj=io.BytesIO(listing.out)) as tar:
        assert "t/sub/f" in tar.getnames()


@pytest.mark.slow
async def test_latency_of_run_echo(server: Server) -> None:
    """Printed (run with -s): `garden run H -- echo hi`, a whole CLI process each time."""
    assert (await garden(server, "create", "--handle", "cli-bench")).code == 0
    samples = []
    for _ in range(20):
        t = time.perf_counter()
        ran = await garden(server, "run", "cli-bench", "--", "echo", "hi")
        samples.append(time.perf_counter() - t)
        assert ran.out == b"hi\n"
    s = sorted(samples)
    median, p90 = statistics.median(s) * 1000, s[int(len(s) * 0.9)] * 1000
    print(f"\ngarden run H -- echo hi: median {median:.1f} ms, p90 {p90:.1f} ms")
    assert median < 1000
