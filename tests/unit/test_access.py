"""Access: bearer-token auth on every route but /ping (HTTP, streams, uploads, WebSocket), the
token file's rules and its reload, the clients' token files, and the unix socket's mode and
group from the moment it exists."""

from __future__ import annotations

import os
import signal
import stat
from functools import partial
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from garden.client import AsyncClient, Client
from garden.client.target import token_from_env
from garden.config import ConfigError, ServerConfig
from garden.errors import UnauthorizedError
from garden.http.auth import TokenFile, read_tokens
from garden.main import serve
from tests.unit.fakes import FakeKernel, FakeNetworker, FakeProcesses, serve_fakes

TOKEN = "s3cret-token-0123456789"


def token_file(tmp_path: Path, *tokens: str, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text("# tokens\n\n" + "\n".join(tokens) + "\n")
    path.chmod(mode)
    return path


def test_tokens_are_read_one_a_line_skipping_comments(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN, "another-token-abcdefgh")
    assert read_tokens(str(path)) == (TOKEN.encode(), b"another-token-abcdefgh")


@pytest.mark.parametrize(
    ("content", "mode", "why"),
    [
        (TOKEN, 0o604, "others may read"),
        (TOKEN, 0o620, "group may write"),
        ("", 0o600, "no token"),
        ("short", 0o600, "at least 16"),
        ("has a space in the middle", 0o600, "at least 16"),
    ],
)
def test_unusable_token_files_are_refused(
    tmp_path: Path, content: str, mode: int, why: str
) -> None:
    path = token_file(tmp_path, content, mode=mode)
    with pytest.raises(ConfigError, match=why):
        read_tokens(str(path))


def test_missing_token_file_and_symlink_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        read_tokens(str(tmp_path / "none"))
    real = token_file(tmp_path, TOKEN)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ConfigError):
        read_tokens(str(tmp_path / "link"))


def test_accepts_only_a_bearer_token_of_the_file(tmp_path: Path) -> None:
    tokens = TokenFile(str(token_file(tmp_path, TOKEN)))
    assert tokens.accepts(f"Bearer {TOKEN}".encode())
    assert tokens.accepts(f"bearer  {TOKEN} ".encode())
    assert not tokens.accepts(None)
    assert not tokens.accepts(TOKEN.encode())
    assert not tokens.accepts(f"Basic {TOKEN}".encode())
    assert not tokens.accepts(f"Bearer {TOKEN}x".encode())
    assert not tokens.accepts(f"Bearer {TOKEN[:-1]}".encode())
    assert not tokens.accepts(b"Bearer ")


def test_reload_keeps_the_old_tokens_when_the_file_breaks(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN)
    tokens = TokenFile(str(path))
    path.chmod(0o644)
    assert not tokens.reload()
    assert tokens.accepts(f"Bearer {TOKEN}".encode())
    token_file(tmp_path, "rotated-token-0123456789")
    assert tokens.reload()
    assert not tokens.accepts(f"Bearer {TOKEN}".encode())
    assert tokens.accepts(b"Bearer rotated-token-0123456789")


async def test_every_route_but_ping_needs_the_token(tmp_path: Path, nursery: trio.Nursery) -> None:
    url = await serve_fakes(nursery, tmp_path, auth_token_file=str(token_file(tmp_path, TOKEN)))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/ping")).status_code == 200
        for method, path in [
            ("GET", "/capacity"),
            ("GET", "/containers"),
            ("POST", "/containers"),
            ("GET", "/events"),
            ("GET", "/openapi.json"),
            ("GET", "/metrics"),
            ("GET", "/no/such/route"),
            ("PUT", "/containers/h/files?destination=/x"),  # a streamed upload
            ("PUT", "/containers/h/processes/p/stdin"),  # a streamed body
            ("POST", "/containers/h/processes"),  # a streamed answer
        ]:
            r = await http.request(method, path, content=b"{}")
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["type"] == "UnauthorizedError"
            assert set(r.json()) == {"type", "message", "handle", "process_id"}
            assert r.headers["www-authenticate"].startswith("Bearer")
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        assert (await http.get("/capacity", headers=wrong)).status_code == 401
        assert (await http.get("/capacity", headers=auth)).status_code == 200
        created = await http.post("/containers", json={"handle": "a"}, headers=auth)
        assert created.status_code == 200, created.text
        # The refused create recorded nothing.
        r = await http.get("/events", headers=auth)
        assert b'"handle":"a"' in r.content
        assert r.content.count(b"ContainerCreateStarted") == 1


async def test_websocket_terminal_needs_the_token(tmp_path: Path, nursery: trio.Nursery) -> None:
    url = await serve_fakes(nursery, tmp_path, auth_token_file=str(token_file(tmp_path, TOKEN)))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(
        b"GET /containers/h/processes/p/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = b""
    with trio.fail_after(10):
        while b"UnauthorizedError" not in answer:
            chunk = await stream.receive_some()
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer
    await stream.aclose()


async def test_clients_send_the_token_of_a_token_file(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GARDEN_TOKEN", raising=False)
    monkeypatch.delenv("GARDEN_TOKEN_FILE", raising=False)
    path = token_file(tmp_path, TOKEN)
    url = await serve_fakes(nursery, tmp_path, auth_token_file=str(path))
    async with AsyncClient(url, token_file=str(path)) as aio:
        assert (await aio.capacity()).max_containers > 0
    async with AsyncClient(url) as aio:
        with pytest.raises(UnauthorizedError):
            await aio.capacity()
    monkeypatch.setenv("GARDEN_TOKEN_FILE", str(path))

    def blocking() -> None:
        with Client(url) as client:
            assert client.capacity().max_containers > 0
        with (
            Client(url, token="wrong-token-0123456789") as client,
            pytest.raises(UnauthorizedError),
        ):
            client.capacity()

    await trio.to_thread.run_sync(blocking)


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = token_file(tmp_path, TOKEN)
    monkeypatch.setenv("GARDEN_TOKEN", "from-env")
    monkeypatch.setenv("GARDEN_TOKEN_FILE", str(path))
    assert token_from_env("given", str(path)) == "given"
    assert token_from_env(None, str(path)) == TOKEN
    assert token_from_env(None) == "from-env"
    monkeypatch.delenv("GARDEN_TOKEN")
    assert token_from_env(None) == TOKEN
    with pytest.raises(ValueError, match="no token"):
        token_from_env(None, str(token_file(tmp_path, "")))


async def test_cli_token_file(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = token_file(tmp_path, TOKEN)
    url = await serve_fakes(nursery, tmp_path, auth_token_file=str(path))

    def cli(*args: str) -> int:
        from garden.cli import main

        return main(["--target", url, *args])

    assert await trio.to_thread.run_sync(cli, "--token-file", str(path), "list") == 0
    assert await trio.to_thread.run_sync(cli, "list") == 1  # 401 is an error from the server


def _fake_server_config(tmp_path: Path, **flags: object) -> ServerConfig:
    """A server on an ephemeral port over an empty rootfs dir (for the fake kernel)."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    return msgspec.structs.replace(
        ServerConfig(
            state_dir=str(tmp_path / "state"), default_rootfs=str(rootfs), bind_port=0, tag="gtest"
        ),
        **flags,
    )


async def test_sighup_rereads_the_token_file(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A real server with its signal handling: SIGHUP swaps the token, SIGTERM stops it."""
    path = token_file(tmp_path, TOKEN)
    config = _fake_server_config(tmp_path, auth_token_file=str(path))
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve(
                config,
                kernel=FakeKernel(),
                processes=FakeProcesses(),
                networker=FakeNetworker(),
                task_status=task_status,
            )
        finally:
            done.set()

    binds = await nursery.start(run)
    new = "rotated-token-0123456789"
    async with httpx.AsyncClient(base_url=binds[0]) as http:
        assert (
            await http.get("/capacity", headers={"Authorization": f"Bearer {TOKEN}"})
        ).is_success
        token_file(tmp_path, new)
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(10):
            while (
                await http.get("/capacity", headers={"Authorization": f"Bearer {new}"})
            ).status_code != 200:
                await trio.sleep(0.01)
        old = await http.get("/capacity", headers={"Authorization": f"Bearer {TOKEN}"})
        assert old.status_code == 401
    os.kill(os.getpid(), signal.SIGTERM)
    with trio.fail_after(20):
        await done.wait()


async def test_bad_token_file_stops_the_start(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN, mode=0o644)
    config = ServerConfig(state_dir=str(tmp_path / "state"), auth_token_file=str(path))
    with pytest.raises(ConfigError, match="others may read"):
        await serve(
            config, kernel=FakeKernel(), processes=FakeProcesses(), networker=FakeNetworker()
        )
    assert not (tmp_path / "state").exists()  # refused before anything was made


async def test_unix_socket_is_0660_with_its_group(tmp_path: Path, nursery: trio.Nursery) -> None:
    sock = tmp_path / "garden.sock"
    group = os.getgroups()[-1] if os.getgroups() else os.getgid()
    config = _fake_server_config(
        tmp_path, bind_socket=str(sock), bind_socket_group=str(group), handle_signals=False
    )
    await nursery.start(
        partial(
            serve, config, kernel=FakeKernel(), processes=FakeProcesses(), networker=FakeNetworker()
        )
    )
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == group
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        assert (await http.get("/ping")).status_code == 200
    nursery.cancel_scope.cancel()


def test_tcp_listener_defaults_to_loopback() -> None:
    assert ServerConfig().bind_ip == "127.0.0.1"
    from garden.cli import build_parser

    args = build_parser("server").parse_args(["server"])
    assert args.bind_ip == "127.0.0.1"
