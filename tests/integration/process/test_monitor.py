"""Processes in a real runc container under conmon: bytes, exit codes, stdin, tty, restarts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import sys
from pathlib import Path

import msgspec
import pytest
import trio

from garden.errors import ExecutableNotFoundError, InvalidRequestError
from garden.linux import monitor, output
from garden.linux.plan import SpawnedProcess
from tests.integration.process.conftest import RUNC, Container
from tests.integration.process.helpers import collect, process_json, run, spawn

pytestmark = pytest.mark.root


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_exact_text_and_binary_bytes(
    container: Container, watcher: output.LogWatcher
) -> None:
    rng = random.Random(7)
    lines: list[bytes] = []
    total = 0
    while total < 5 << 20:
        line = "".join(rng.choice("abc é€\U0001f600\t\r") for _ in range(rng.randrange(0, 300)))
        lines.append(line.encode() + b"\n")
        total += len(lines[-1])
    text = b"".join(lines) + b"no newline at the end"
    binary = rng.randbytes(5 << 20)
    (container.rootfs / "tmp" / "text").write_bytes(text)
    (container.rootfs / "tmp" / "binary").write_bytes(binary)
    for name, data in (("text", text), ("binary", binary)):
        result = await run(container, watcher, "cat", f"/tmp/{name}")
        assert result.status == 0
        assert _sha(result.stdout) == _sha(data), name
        assert result.stderr == b""


async def test_stdout_and_stderr_apart(container: Container, watcher: output.LogWatcher) -> None:
    result = await run(container, watcher, "sh", "-c", "echo out; echo err >&2; printf tail")
    assert result.stdout == b"out\ntail"
    assert result.stderr == b"err\n"


@pytest.mark.parametrize("code", [0, 7, 255])
async def test_exit_codes(container: Container, watcher: output.LogWatcher, code: int) -> None:
    assert (await run(container, watcher, "sh", "-c", f"exit {code}")).status == code


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
async def test_signal_gives_128_plus_signal(container: Container, signum: int) -> None:
    facts = await spawn(container, process_json(container, "sleep", "100"))
    try:
        assert monitor.status(facts) == "running"
        assert monitor.signal(facts, signum)
        with trio.fail_after(5):
            assert await monitor.wait_exit(facts) == 128 + signum
        assert monitor.status(facts) == "exited"
        assert not monitor.signal(facts, signum)  # gone: nothing is hit
    finally:
        await monitor.cleanup(facts)


async def test_env_order_user_and_cwd(container: Container, watcher: output.LogWatcher) -> None:
    env = ["CONTAINER=no", "X=1"]
    result = await run(container, watcher, "cat", "/proc/self/environ", user="vcap", env=env)
    assert result.stdout.split(b"\0") == [
        b"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        b"CONTAINER=no",
        b"X=1",
        b"HOME=/home/vcap",
        b"USER=vcap",
        b"",
    ]
    ids = await run(container, watcher, "sh", "-c", "id -u; id -G; pwd", user="vcap")
    assert ids.stdout == b"1000\n1000 50\n/home/vcap\n"


async def test_missing_dir_is_created(container: Container, watcher: output.LogWatcher) -> None:
    result = await run(
        container, watcher, "sh", "-c", "pwd; stat -c %u /tmp/w/x", dir="/tmp/w/x", user="vcap"
    )
    assert result.stdout == b"/tmp/w/x\n1000\n"


async def test_rlimits(container: Container, watcher: output.LogWatcher) -> None:
    result = await run(
        container,
        watcher,
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; ulimit -u",
        limits={"nofile": 512, "nproc": 77},
    )
    assert result.stdout == b"512\n512\n77\n"
    with pytest.raises(InvalidRequestError, match="at most"):
        process_json(container, "true", limits={"nofile": 1 << 40})


async def test_privileged_caps(container: Container, watcher: output.LogWatcher) -> None:
    plain = await run(container, watcher, "grep", "CapEff", "/proc/self/status")
    assert plain.stdout == b"CapEff:\t00000000a80425fb\n"
    vcap = await run(container, watcher, "grep", "CapEff", "/proc/self/status", user="vcap")
    assert vcap.stdout == b"CapEff:\t0000000000000000\n"


async def test_missing_executable(container: Container) -> None:
    with pytest.raises(ExecutableNotFoundError):
        process_json(container, "no-such-binary")
    with pytest.raises(ExecutableNotFoundError):
        process_json(container, "/etc/passwd")  # not executable
    # Bypassing the check, runc's own failure maps to the same error and leaves no link.
    proc = process_json(container, "true")
    proc["args"] = ["/no/such/binary"]
    before = set(container.processes.iterdir())
    with pytest.raises(ExecutableNotFoundError, match="no such file"):
        await spawn(container, proc)
    assert list(container.socket_dir.iterdir()) == []
    assert set(container.processes.iterdir()) == before  # the process dir went too


async def test_stdin_echo_and_eof(container: Container, watcher: output.LogWatcher) -> None:
    facts = await spawn(container, process_json(container, "cat"), stdin=True)
    data = random.Random(1).randbytes(3 << 20)
    try:
        async with trio.open_nursery() as nursery:
            got: list[output.Chunk] = []

            async def read() -> None:
                got.extend(await collect(watcher, facts))

            nursery.start_soon(read)
            stdin = await monitor.open_stdin(facts)
            await stdin.send_all(data[:1000])
            await stdin.send_all(data[1000:])
            await stdin.aclose()  # EOF: cat exits
        assert _sha(b"".join(c.data for c in got)) == _sha(data)
        assert await monitor.wait_exit(facts) == 0
    finally:
        await monitor.cleanup(facts)


async def test_stdin_needs_to_be_requested(container: Container) -> None:
    facts = await spawn(container, process_json(container, "true"))
    try:
        with pytest.raises(InvalidRequestError):
            await monitor.open_stdin(facts)
    finally:
        await monitor.cleanup(facts)


async def test_follow_is_live(container: Container, watcher: output.LogWatcher) -> None:
    proc = process_json(container, "sh", "-c", "echo one; read x; echo two $x")
    facts = await spawn(container, proc, stdin=True)
    try:
        follow = watcher.follow(facts.log_path, facts.exit_path)
        async with contextlib.aclosing(follow) as chunks:
            with trio.fail_after(5):
                first = await anext(chunks)
            assert first.data == b"one\n"
            stdin = await monitor.open_stdin(facts)
            await stdin.send_all(b"three\n")
            with trio.fail_after(5):
                second = await anext(chunks)
            assert second.data == b"two three\n"
            with pytest.raises(StopAsyncIteration):
                await anext(chunks)  # the process exited without reading more
            await stdin.aclose()
        assert await monitor.wait_exit(facts) == 0
    finally:
        await monitor.cleanup(facts)


async def test_tty_resize_is_not_lost_to_a_merged_ctl_read(
    container: Container, watcher: output.LogWatcher
) -> None:
    # conmon reads the ctl FIFO and stdin independently, so a resize is only known to have
    # landed once the process sees it: poke it with newlines until it reports the new size.
    script = (
        'tty; stty size; while read x; do s=$(stty size); echo "$s";'
        ' [ "$s" = "40 132" ] && break; done; echo done'
    )
    proc = process_json(container, "sh", "-c", script, tty=True, console_size=(24, 80))
    facts = await spawn(container, proc, stdin=True)
    try:
        follow = watcher.follow(facts.log_path, facts.exit_path)
        text = b""
        async with contextlib.aclosing(follow) as chunks:
            with trio.fail_after(5):
                async for chunk in chunks:
                    text += chunk.data
                    if text.endswith(b"24 80\r\n"):
                        break
            assert monitor.resize(facts, 40, 132)
            stdin = await monitor.open_stdin(facts)
            await stdin.send_all(b"\n")
            with trio.move_on_after(10):
                async for chunk in chunks:
                    text += chunk.data
                    if text.endswith(b"24 80\r\n"):
                        await stdin.send_all(b"\n")
        assert text.startswith(b"/dev/pts/"), text
        assert text.endswith(b"40 132\r\ndone\r\n")
        assert await monitor.wait_exit(facts) == 0
        await stdin.aclose()
    finally:
        await monitor.cleanup(facts)


async def test_tty_without_size_set_later(container: Container, watcher: output.LogWatcher) -> None:
    result = await run(container, watcher, "stty", "size", tty=True, console_size=(33, 99))
    assert result.stdout == b"33 99\r\n"


_CRASHING_SPAWNER = """
import sys, os, trio, msgspec
from garden.linux import monitor, process_spec
runtime, root, cid, pdir, sdir, rootfs, out = sys.argv[1:]
async def main():
    proc = process_spec.prepare_process(
        rootfs, path="sh", args=["-c", "sleep 1; echo late; exit 3"], user="root", ceiling={}
    ).process
    facts = await monitor.spawn(runtime=runtime, runtime_root=root, container_id=cid,
                                process_dir=pdir, process=proc, socket_dir=sdir)
    with open(out, "wb") as f:
        f.write(msgspec.json.encode(facts))
    os.kill(os.getpid(), 9)  # the server "crashes" with the process running
trio.run(main)
"""


async def test_process_outlives_a_crashed_spawner(
    container: Container, watcher: output.LogWatcher, tmp_path: Path
) -> None:
    pdir = container.processes / "crash"
    stored = tmp_path / "facts.json"
    args = [RUNC, str(container.runtime_root), container.id, str(pdir)]
    args += [str(container.socket_dir), str(container.root), str(stored)]
    done = await trio.run_process([sys.executable, "-c", _CRASHING_SPAWNER, *args], check=False)
    assert done.returncode == -9
    facts = msgspec.json.decode(stored.read_bytes(), type=SpawnedProcess)
    try:
        assert monitor.status(facts) == "running"
        with trio.fail_after(10):
            chunks = await collect(watcher, facts)
            assert await monitor.wait_exit(facts) == 3
        assert b"".join(c.data for c in chunks) == b"late\n"
    finally:
        await monitor.cleanup(facts)


async def test_outlives_the_spawning_task(container: Container, watcher: output.LogWatcher) -> None:
    stored: list[bytes] = []

    async def spawner() -> None:
        facts = await spawn(container, process_json(container, "sh", "-c", "sleep 0.3; exit 4"))
        stored.append(msgspec.json.encode(facts))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spawner)
    facts = msgspec.json.decode(stored[0], type=SpawnedProcess)
    try:
        assert await monitor.wait_exit(facts) == 4
    finally:
        await monitor.cleanup(facts)


def _leftovers(facts: SpawnedProcess) -> list[str]:
    """What of the process is still there (nothing, after cleanup)."""
    found = []
    if monitor.is_running(facts.conmon_pid, facts.conmon_start_time):
        found.append("conmon")
    if monitor.is_running(facts.pid, facts.pid_start_time):
        found.append("process")
    if os.path.lexists(facts.socket_link):
        found.append("socket link")
    if os.path.exists(facts.process_dir):
        found.append("process dir")
    return found


async def test_cleanup_leaves_nothing(container: Container) -> None:
    facts = await spawn(container, process_json(container, "sleep", "100"), stdin=True)
    assert _leftovers(facts) == ["conmon", "process", "socket link", "process dir"]
    with trio.fail_after(10):
        await monitor.cleanup(facts)
    assert _leftovers(facts) == []
    await monitor.cleanup(facts)  # idempotent


async def test_cleanup_after_normal_exit(container: Container, watcher: output.LogWatcher) -> None:
    result = await run(container, watcher, "true")
    assert _leftovers(result.facts) == []
    pgrep = ["pgrep", "-f", f"conmon.*{result.facts.process_dir}"]
    assert (await trio.run_process(pgrep, check=False, capture_stdout=True)).stdout == b""


async def test_cancelled_spawn_leaves_no_process(container: Container) -> None:
    before = set(container.processes.iterdir()) if container.processes.exists() else set()
    with trio.CancelScope() as scope:
        scope.cancel()
        await spawn(container, process_json(container, "sleep", "100"))
    assert scope.cancelled_caught
    assert set(container.processes.iterdir()) == before


async def test_tty_stdin_survives_a_client_and_ends_with_ctrl_d(container: Container) -> None:
    proc = process_json(container, "cat", tty=True, console_size=(10, 40))
    facts = await spawn(container, proc, stdin=True)
    try:
        first = await monitor.open_stdin(facts)
        await first.send_all(b"one\n")
        await first.aclose()  # only disconnects: a terminal has no EOF of its own
        second = await monitor.open_stdin(facts)
        await second.send_all(b"two\n\x04")
        with trio.fail_after(5):
            assert await monitor.wait_exit(facts) == 0
        await second.aclose()
        text = b"".join(c.data for c in output.read_chunks(facts.log_path))
        # each line twice (the terminal's echo and cat's copy), in an order of their making
        assert sorted(text.split(b"\r\n")) == [b"", b"one", b"one", b"two", b"two"]
    finally:
        await monitor.cleanup(facts)
