"""Fixtures for end-to-end tests: a real server (in-process, or as a separate process that a
test may SIGKILL) over the real kernel, with its own state dir and its own resource tag, and a
check after every test that nothing of that tag is left in the kernel."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from garden.config import DEFAULT_ROOTFS, ServerConfig
from garden.linux.cgroups import detect
from garden.linux.leftovers import leftovers as find_leftovers
from garden.linux.leftovers import nft_leftovers as nft_leftovers
from garden.linux.net.netlink import list_links
from garden.linux.runtime import crun_refuses_host
from garden.main import serve
from tests.services import free_port, wait_answering


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, cgroups and mounts")
    if shutil.which("runc") is None:
        pytest.skip("needs runc (scripts/setup.sh installs it)")
    if not Path(DEFAULT_ROOTFS, "bin", "busybox").exists():
        pytest.skip(f"needs the default rootfs at {DEFAULT_ROOTFS} (scripts/setup.sh builds it)")


def runtime_binary() -> str:
    """The OCI runtime a server with `--runtime auto` picks on this host (as probe_runtime)."""
    crun = shutil.which("crun")
    if crun is not None and crun_refuses_host() is None:
        return crun
    return shutil.which("runc") or "runc"


def in_runtime(
    state_dir: str | Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the server's OCI runtime on its own state (`<state>/runtime`), e.g. `exec CID ls`:
    to look inside a container from outside the server."""
    return subprocess.run(
        [runtime_binary(), "--root", str(Path(state_dir, "runtime")), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


# State dirs of test servers live here, not under pytest's tmp dir: the mapped root of
# unprivileged containers (a high host uid) must traverse every parent of its bundle, and pytest
# resets its own base dir to 0700 whenever a session starts.
TEST_ROOT = Path("/var/tmp/garden-tests")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    TEST_ROOT.mkdir(mode=0o711, exist_ok=True)
    TEST_ROOT.chmod(0o711)
    path = TEST_ROOT / secrets.token_hex(4)
    path.mkdir(mode=0o711)
    try:
        yield path / "state"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def new_tag() -> str:
    return "t" + secrets.token_hex(3)


def random_pool() -> str:
    """A /22 of its own for each test server inside 10.128.0.0/9 (never the default pool), so
    that servers running at the same time never make the same subnet."""
    return str(ipaddress.IPv4Network((0x0A800000 + secrets.randbelow(1 << 13) * 1024, 22)))


PORT_POOL_SIZE = 100


def random_port_pool_start() -> int:
    """Host ports of its own for each test server's net-in mappings."""
    return 40000 + secrets.randbelow(200) * PORT_POOL_SIZE


def our_links(tag: str) -> list[str]:
    return list_links(tag)


def leftovers(config: ServerConfig, settle: float = 5.0) -> list[str]:
    """Every kernel resource and file of this server's tag that still exists
    (`garden.linux.leftovers`, shared with `just load`)."""
    return find_leftovers(
        tag=config.tag,
        state_dir=Path(config.state_dir),
        network_pool=config.network_pool,
        cgroup_parent=config.cgroup_parent,
        settle=settle,
    )


def trash_left(config: ServerConfig, deadline: float) -> list[str]:
    """Destroyed bundles not yet deleted: a server deletes them in the background after it
    answered (and after its next start, those a crash left), so they get until `deadline`."""
    trash = Path(config.state_dir, "trash")
    while True:
        left = sorted(os.listdir(trash)) if trash.exists() else []
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


async def force_cleanup(config: ServerConfig) -> None:
    """Release whatever a failed test left, so one failure does not leak into the machine."""
    from garden.main import build_kernel, build_networker

    kernel = await build_kernel(config)
    await kernel.sweep(set())
    await detect().remove(config.cgroup_parent, timeout=5)
    await build_networker(config).remove_all()


# The default registry of test servers: a closed port on loopback, so that no `docker:///name`
# (a test's, or one a fuzzer made up) ever reaches Docker Hub; tests traffic stays on 127/8.
NO_REGISTRY = "127.0.0.1:9"


def make_config(state_dir: Path, **overrides: object) -> ServerConfig:
    values: dict[str, object] = {
        "state_dir": str(state_dir),
        "bind_port": 0,
        "tag": new_tag(),
        "handle_signals": False,
        "network_pool": random_pool(),
        "port_pool_start": random_port_pool_start(),
        "port_pool_size": PORT_POOL_SIZE,
        "ip_forward": False,
        "docker_registry": NO_REGISTRY,
    }
    values.update(overrides)
    import msgspec

    return msgspec.convert(values, ServerConfig)


class Server:
    def __init__(self, config: ServerConfig, url: str, client: httpx.AsyncClient) -> None:
        self.config = config
        self.url = url
        self.client = client


@pytest.fixture
def server_overrides() -> dict[str, object]:
    """Config values for the `server` fixture; a test module overrides this fixture to run
    its server with other flags."""
    return {}


@pytest.fixture
async def server(
    state_dir: Path, nursery: trio.Nursery, server_overrides: dict[str, object]
) -> AsyncIterator[Server]:
    needs_root()
    config = make_config(state_dir, **server_overrides)
    binds = await nursery.start(serve, config)
    try:
        async with httpx.AsyncClient(base_url=binds[0], timeout=60) as client:
            yield Server(config, binds[0], client)
            handles = (await client.get("/containers")).json()["handles"]
            for handle in handles:
                r = await client.delete(f"/containers/{handle}")
                assert r.status_code == 200, r.text
            nursery.cancel_scope.cancel()
        assert await trio.to_thread.run_sync(leftovers, config) == []
    finally:
        with trio.CancelScope(shield=True):
            await force_cleanup(config)


class ServerProcess:
    """`garden server` as a separate process, so a test can SIGKILL and restart it."""

    def __init__(self, state_dir: Path, tag: str) -> None:
        self.state_dir = state_dir
        self.tag = tag
        self.pool = random_pool()
        self.port_pool_start = random_port_pool_start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []
        self.start_timeout = 10.0  # seconds for /ping to answer after the exec
        self.log = state_dir.parent / "server.log"
        state_dir.parent.mkdir(parents=True, exist_ok=True)

    @property
    def config(self) -> ServerConfig:
        return ServerConfig(
            state_dir=str(self.state_dir),
            tag=self.tag,
            bind_port=self.port,
            network_pool=self.pool,
            port_pool_start=self.port_pool_start,
            port_pool_size=PORT_POOL_SIZE,
            ip_forward=False,
            docker_registry=NO_REGISTRY,
        )

    def start(self, crash_at: str = "") -> None:
        """Start the server; `crash_at` arms its crash points (garden/faults.py)."""
        env = {k: v for k, v in os.environ.items() if k != "GARDEN_CRASH_AT"}
        if crash_at:
            env["GARDEN_CRASH_AT"] = crash_at
        argv = [
            sys.executable, "-m", "garden.cli", "server",
            "--state-dir", str(self.state_dir), "--bind-port", str(self.port), "--tag", self.tag,
            "--network-pool", self.pool, "--no-ip-forward",
            "--port-pool-start", str(self.port_pool_start),
            "--port-pool-size", str(PORT_POOL_SIZE), "--docker-registry", NO_REGISTRY,
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env
            )
        wait_answering(
            f"{self.url}/ping", {200}, self.proc, self.log, timeout=self.start_timeout,
            what="server",
        )  # fmt: skip

    def wait_crashed(self) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=60)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@pytest.fixture
def server_process(state_dir: Path) -> Iterator[ServerProcess]:
    needs_root()
    sp = ServerProcess(state_dir, new_tag())
    try:
        yield sp
    finally:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.kill()
        trio.run(force_cleanup, sp.config)
