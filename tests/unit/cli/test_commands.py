"""`garden` commands run in-process (`garden.cli.main` in a worker thread) against the real
server on fakes and against FakeGarden: what they print, and their exit codes."""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import trio

from garden.cli import main
from garden.cli.terminal import run_session
from garden.client import Client
from tests.unit.fakes import FakeProcesses
from tests.unit.servers import Fake, Real


async def garden(target: str, *argv: str) -> int:
    return await trio.to_thread.run_sync(main, ["--target", target, *argv])


def exit_at_once(monkeypatch: pytest.MonkeyPatch, processes: FakeProcesses, status: int) -> None:
    """Fake processes write their output and exit with `status` as soon as they start."""
    spawn = processes.spawn

    async def spawn_and_exit(*args: Any, **kwargs: Any) -> Any:
        facts = await spawn(*args, **kwargs)
        processes.finish(facts, status)
        return facts

    monkeypatch.setattr(processes, "spawn", spawn_and_exit)


async def test_container_commands(real: Real, capfd: pytest.CaptureFixture[str]) -> None:
    assert (
        await garden(real.url, "create", "--handle", "web", "-p", "tier=a", "--grace-time", "5m")
        == 0
    )
    assert capfd.readouterr().out == "web\n"
    assert await garden(real.url, "--json", "create") == 0
    made = json.loads(capfd.readouterr().out)["handle"]
    assert await garden(real.url, "list", "--json") == 0
    assert sorted(json.loads(capfd.readouterr().out)["handles"]) == sorted(["web", made])
    assert await garden(real.url, "list", "-p", "tier=a") == 0
    assert capfd.readouterr().out == "web\n"
    assert await garden(real.url, "info", "web") == 0
    out = capfd.readouterr().out
    assert "state           active" in out and "tier=a" in out and "300 s" in out
    assert await garden(real.url, "property", "set", "web", "owner", "me") == 0
    assert await garden(real.url, "property", "get", "web", "owner") == 0
    assert capfd.readouterr().out == "me\n"
    assert await garden(real.url, "property", "get", "web", "--json") == 0
    assert json.loads(capfd.readouterr().out) == {"tier": "a", "owner": "me"}
    assert await garden(real.url, "property", "rm", "web", "owner") == 0
    assert await garden(real.url, "property", "get", "web", "owner") == 1
    assert "PropertyNotFoundError" in capfd.readouterr().err
    assert await garden(real.url, "stop", "--kill", "web") == 0
    assert await garden(real.url, "destroy", "web", made) == 0
    assert await garden(real.url, "destroy", "web") == 1
    assert capfd.readouterr().err == "garden: ContainerNotFoundError: unknown handle: web\n"
    assert await garden(real.url, "create", "--handle", "lim", "--limit", "pids=50") == 0
    capfd.readouterr()
    assert await garden(real.url, "limit", "lim", "pids") == 0
    assert capfd.readouterr().out == "max  50\n"
    assert await garden(real.url, "limit", "lim", "memory", "64M") == 0
    assert capfd.readouterr().out == "limit_in_bytes  67108864\n"
    assert await garden(real.url, "metrics", "--json", "lim", "ghost") == 0
    both = json.loads(capfd.readouterr().out)
    assert "metrics" in both["lim"] and both["ghost"]["error"]["type"] == "ContainerNotFoundError"
    assert await garden(real.url, "metrics", "lim", "ghost") == 1
    assert "garden: ghost: ContainerNotFoundError" in capfd.readouterr().err
    assert await garden(real.url, "destroy", "lim") == 0
    assert await garden(real.url, "capacity") == 0
    assert re.search(r"^max containers  [1-9]\d*$", capfd.readouterr().out, re.M)


async def test_run_prints_output_and_exits_with_the_status(
    real: Real, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exit_at_once(monkeypatch, real.processes, 3)
    assert await garden(real.url, "create", "--handle", "c") == 0
    capfd.readouterr()
    assert await garden(real.url, "run", "c", "--", "echo", "a", "--", "b") == 3
    out, err = capfd.readouterr()
    assert (out, err) == ("a -- b", "erré")
    assert await garden(real.url, "run", "--json", "c", "--", "echo", "x") == 3
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert lines[0].keys() == {"process_id"}
    assert lines[1] == {"process_id": lines[0]["process_id"], "source": "stdout", "data": "x"}
    assert lines[-1] == {"process_id": lines[0]["process_id"], "exit_status": 3}
    assert await garden(real.url, "run", "-d", "--id", "named", "c", "--", "true") == 0
    assert capfd.readouterr().out == "named\n"
    assert await garden(real.url, "attach", "c", "named") == 3
    assert capfd.readouterr().out == ""  # `true` wrote the fake's args: none
    assert await garden(real.url, "run", "c", "--", "/missing") == 1
    assert "ExecutableNotFoundError" in capfd.readouterr().err
    assert await garden(real.url, "events", "--json") == 0
    types = [json.loads(line)["event"]["type"] for line in capfd.readouterr().out.splitlines()]
    assert "ProcessStarted" in types and "ProcessExited" in types


async def test_terminal_session_over_pipes(real: Real, monkeypatch: pytest.MonkeyPatch) -> None:
    exit_at_once(monkeypatch, real.processes, 5)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()

    def session() -> int:
        with Client(real.url) as c:
            c.create()
            handle = c.handles()[0]
            from garden.api import ProcessSpec, TtySize

            stream = c.run(handle, ProcessSpec(path="sh", args=["hi"], tty=TtySize()))
            stream.close()
            with c.terminal(handle, stream.process_id) as term:
                return run_session(term, interactive=True, in_fd=in_r, out_fd=out_w)

    try:
        os.write(in_w, b"typed\r")
        assert await trio.to_thread.run_sync(session) == 5
        os.close(out_w)
        with os.fdopen(out_r, "rb") as f:
            assert f.read() == "hierré".encode()
    finally:
        for fd in (in_r, in_w):
            os.close(fd)


async def test_files_commands(
    fake: Fake, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(b"\x00beta")
    assert await garden(fake.url, "stream-in", "c", "--destination", "/app", str(src)) == 0
    files = fake.app.containers["c"].files
    assert files["/app/a.txt"] == b"alpha" and files["/app/sub/b.bin"] == b"\x00beta"
    assert await garden(fake.url, "stream-in", "c", "-d", "/one", str(src / "a.txt")) == 0
    assert files["/one"] == b"alpha"

    assert await garden(fake.url, "stream-out", "c", "--source", "/one") == 0
    assert capfd.readouterr().out == "alpha"
    out_dir = tmp_path / "out"
    assert await garden(fake.url, "stream-out", "c", "--source", "/app", str(out_dir)) == 0
    assert (out_dir / "app" / "sub" / "b.bin").read_bytes() == b"\x00beta"
    assert await garden(fake.url, "stream-out", "c", "--source", "/app/", str(out_dir)) == 0
    assert (out_dir / "sub" / "b.bin").read_bytes() == b"\x00beta"
    out_dir.mkdir(exist_ok=True)
    assert await garden(fake.url, "stream-out", "c", "-s", "/one", str(out_dir)) == 0
    assert (out_dir / "one").read_bytes() == b"alpha"
    assert await garden(fake.url, "stream-out", "c", "-s", "/nope") == 1
    assert "FileNotFoundError" in capfd.readouterr().err
    assert await garden(fake.url, "stream-in", "c", "-d", "/x", str(tmp_path / "missing")) == 2


async def test_a_tar_that_escapes_is_refused(
    fake: Fake, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        tar.add(__file__, arcname="../escaped.py")
    assert await garden(fake.url, "stream-in", "c", "-d", "/d", "--tar", str(evil)) == 0
    fake.app.containers["c"].files["/d/../escaped.py"] = b"x"  # what a hostile server sends
    assert await garden(fake.url, "stream-out", "c", "-s", "/d/", str(tmp_path / "out")) == 1
    assert not (tmp_path / "escaped.py").exists()
    assert "refusing './../escaped.py'" in capfd.readouterr().err


async def test_limit_and_net_commands(fake: Fake, capfd: pytest.CaptureFixture[str]) -> None:
    async def run(*argv: str) -> tuple[int, str]:
        code = await garden(fake.url, *argv)
        return code, capfd.readouterr().out

    assert await run("limit", "c", "memory") == (0, "(no limit)\n")
    assert await run("limit", "c", "memory", "64M") == (0, "limit_in_bytes  67108864\n")
    code, out = await run("--json", "limit", "c", "disk", "byte_hard=1G", "inode_hard=100")
    assert code == 0 and json.loads(out)["byte_hard"] == 1 << 30
    assert await run("net-in", "c", "--container-port", "8080") == (
        0,
        "host_port       61001\ncontainer_port  8080\n",
    )
    assert await run("net-out", "c", "--network", "10.0.0.0/8", "--protocol", "tcp") == (0, "")
    [rule] = fake.app.containers["c"].rules
    assert (rule["network"], rule["protocol"], rule["port"]) == ("10.0.0.0/8", "tcp", None)
    code, out = await run("info", "--json", "c", "ghost")
    assert code == 0 and set(json.loads(out)) == {"c", "ghost"}
    assert await garden(fake.url, "info", "c", "ghost") == 1
    out, err = capfd.readouterr()
    assert "container_ip    10.254.0.1" in out
    assert err == "garden: ghost: ContainerNotFoundError: unknown handle: ghost\n"
    assert (await run("metrics", "c"))[1].startswith("memory_stat  cache=0")
