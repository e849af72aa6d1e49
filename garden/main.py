"""Wiring: the event log, replay, the kernel side, the supervisor and the HTTP server, in one
nursery, with a graceful shutdown that leaves containers running."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from garden import __version__, bounds
from garden.actors.ports import ContainerFiles, ContainerKernel, Networker, ProcessKernel
from garden.actors.supervisor import Supervisor
from garden.config import MONITOR_SOCKET_ROOT, ConfigError, ServerConfig, group_id
from garden.errors import KernelError
from garden.events.journal import Journal
from garden.events.schema import ServerStarted
from garden.events.snapshot import SNAPSHOT_FILE, Restored, restore
from garden.events.snapshotter import Snapshotter
from garden.events.state import evolve
from garden.http.app import ASGIApp, asgi_with_close_fix, create_app
from garden.http.auth import TokenFile, require_token
from garden.http.head_limits import limit_heads
from garden.http.tuning import tune_for_streaming
from garden.linux.cgroups import detect
from garden.linux.containers import LinuxContainers
from garden.linux.files import LinuxFiles
from garden.linux.images.auth import AuthFileError, RegistryAuth
from garden.linux.images.registry import Registries, RegistryOptions
from garden.linux.images.store import LayerStore
from garden.linux.keys import ensure_key_quota
from garden.linux.monitor import find_garden_monitor
from garden.linux.net.networker import LinuxNetworker
from garden.linux.output import open_log_watcher
from garden.linux.processes import LinuxProcesses
from garden.linux.runtime import probe_runtime
from garden.linux.trash import Trash, open_trash
from garden.malloc import trim_periodically, tune_malloc
from garden.memdebug import MemoryReporter, report_on_signal, reporter_from_env

log = logging.getLogger("garden.main")

SHUTDOWN_GRACE = 10.0


def open_log(config: ServerConfig) -> Restored:
    """Open the event log and rebuild the state: the snapshot plus the records after it, or
    the whole log when there is no usable snapshot."""
    state_dir = config.state_path
    # 0711: the mapped root of unprivileged containers must traverse it to reach its bundle.
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    return restore(state_dir / "events.log", state_dir / SNAPSHOT_FILE)


async def build_kernel(config: ServerConfig, *, trash: Trash | None = None) -> LinuxContainers:
    state_dir = config.state_path
    runtime = await probe_runtime(config.runtime, root=state_dir / "runtime")
    ensure_key_quota(config.max_containers)
    return LinuxContainers(
        state_dir=state_dir,
        runtime=runtime,
        tty_helper_path=find_garden_monitor(),
        cgroups=detect(),
        cache_dir=state_dir / "rootfs-cache",
        cgroup_parent=config.cgroup_parent,
        trash=trash,
        images=LayerStore(state_dir / "images", registries_of(config)),
    )


def registries_of(config: ServerConfig) -> Registries:
    try:
        auth = RegistryAuth(config.registry_auth_file)
    except AuthFileError as e:
        raise ConfigError(f"--registry-auth-file: {e}") from e
    return Registries(
        RegistryOptions(
            default=config.docker_registry,
            insecure=config.insecure_docker_registries,
            timeout=config.registry_timeout,
        ),
        auth=auth,
    )


def build_networker(config: ServerConfig) -> LinuxNetworker:
    return LinuxNetworker(
        tag=config.tag,
        pool=config.network_pool,
        deny_networks=config.deny_networks,
        dns_servers=config.dns_servers,
        ip_forward=config.ip_forward,
        mtu=config.mtu,
    )


def hypercorn_config(config: ServerConfig, unix_fd: int | None = None) -> HypercornConfig:
    """Hypercorn's settings; `unix_fd` is the listening socket of `bind_unix_socket`."""
    hc = HypercornConfig()
    binds = []
    if config.bind_port or not config.bind_socket:
        binds.append(f"{config.bind_ip}:{config.bind_port}")
    if unix_fd is not None:
        binds.append(f"fd://{unix_fd}")
    hc.bind = binds
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = 5.0
    # A client holds a connection only this long without a complete request head: idle
    # between requests, or trickling headers (slowloris). Streams are not affected.
    hc.keep_alive_timeout = config.keep_alive_timeout
    hc.h11_max_incomplete_size = bounds.MAX_HEADER_BYTES
    hc.websocket_max_message_size = bounds.MAX_WEBSOCKET_MESSAGE
    return hc


def bind_unix_socket(path: str, group: str | None) -> socket.socket:
    """The server's unix socket, bound mode 0600 and only then given its group and 0660, so
    nobody else can connect in between. Call it before any thread runs (it sets the umask)."""
    if Path(path).is_socket():
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(previous)
        if group is not None:
            os.chown(path, -1, group_id(group))
        os.chmod(path, 0o660)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    config: ServerConfig,
    *,
    kernel: ContainerKernel | None = None,
    processes: ProcessKernel | None = None,
    networker: Networker | None = None,
    files: ContainerFiles | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until SIGTERM/SIGINT (or until cancelled). Containers and their
    processes keep running. `kernel`, `processes`, `networker` and `files` replace the real
    ones in unit tests."""
    if networker is None and kernel is not None:
        # A real networker would wire a fake kernel's "containers" into the host's network.
        raise TypeError("serve() with a kernel of its own needs a networker of its own too")
    tune_malloc()  # before any worker thread takes an arena
    reporter = reporter_from_env()  # GARDEN_TRACEMALLOC: a debug switch (docs/operations.md)
    tokens = TokenFile(config.auth_token_file) if config.auth_token_file else None
    unix = (
        bind_unix_socket(config.bind_socket, config.bind_socket_group)
        if config.bind_socket
        else None
    )
    try:
        started = time.perf_counter()
        restored = open_log(config)
    except BaseException:
        if unix is not None:
            unix.close()
        raise
    log.info(
        "replayed records=%d snapshot_seq=%d containers=%d seconds=%.3f",
        restored.replayed,
        restored.snapshot_seq,
        len(restored.state.containers),
        time.perf_counter() - started,
    )
    async with AsyncExitStack() as stack:
        stack.callback(restored.log.close)
        if unix is not None:
            stack.callback(unix.close)
        # The state is large and lives as long as the server: keep the collector from
        # scanning it over and over (at 1M events, 0.4 s less CPU before the first request).
        gc.freeze()
        stack.callback(gc.unfreeze)
        if kernel is None or processes is None:
            trash = await stack.enter_async_context(open_trash(config.state_path / "trash"))
            real = await build_kernel(config, trash=trash)
            stack.callback(real.images.registries.close)  # idle connections to registries
            stack.push_async_callback(
                release_when_empty, real.remove_cgroup_parent_if_empty, restored
            )
            watcher = await stack.enter_async_context(open_log_watcher())
            kernel = real
            processes = LinuxProcesses(
                runtime=real.runtime,
                socket_dir=socket_dir(config),
                watcher=watcher,
                log_format=config.process_output,
                garden_monitor=choose_monitor(config.process_monitor),
                cgroups=real.cgroups,
                process_exec=config.process_exec,
            )
            processes.sweep_socket_dir()
        if networker is None:
            networker = build_networker(config)
            stack.push_async_callback(release_when_empty, networker.remove_all, restored)
        await _serve(
            config,
            restored,
            kernel,
            processes,
            networker,
            files,
            tokens,
            unix,
            reporter,
            task_status,
        )


async def release_when_empty(release: Callable[[], Awaitable[object]], restored: Restored) -> None:
    """After a stop that leaves no container, release what the server keeps for its containers
    (its parent cgroups, its nft table); the next start makes them again. With containers left
    they stay, for those."""
    if restored.state.containers:
        return
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + SHUTDOWN_GRACE
        try:
            await release()
        except (KernelError, OSError) as e:  # logged; the next start finds them again
            log.warning("release-at-stop-failed what=%s reason=%s", release.__qualname__, e)


def choose_monitor(kind: str) -> str | None:
    """The garden-monitor binary batch processes run under, or None for conmon."""
    if kind == "conmon":
        return None
    found = find_garden_monitor()
    if found is None:
        if kind == "garden-monitor":
            raise ConfigError("--process-monitor garden-monitor: not installed (scripts/setup.sh)")
        log.warning("garden-monitor-missing using=conmon hint=scripts/setup.sh builds it")
    return found


def socket_dir(config: ServerConfig) -> Path:
    """Where conmon puts its attach sockets: short, because a socket path has 108 bytes."""
    return Path(MONITOR_SOCKET_ROOT) / config.tag


async def _serve(
    config: ServerConfig,
    restored: Restored,
    kernel: ContainerKernel,
    processes: ProcessKernel,
    networker: Networker,
    files: ContainerFiles | None,
    tokens: TokenFile | None,
    unix: socket.socket | None,
    reporter: MemoryReporter | None,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    event_log, state = restored.log, restored.state
    journal = Journal(event_log, lambda record: evolve(state, record))
    snapshots = Snapshotter(
        config.state_path / SNAPSHOT_FILE,
        state,
        journal,
        every=config.snapshot_every,
        written=restored.snapshot_seq,
    )
    shutdown = trio.Event()
    try:
        async with trio.open_nursery() as outer:
            await outer.start(journal.run)
            await journal.record(ServerStarted(version=__version__, pid=os.getpid()))
            async with trio.open_nursery() as inner:
                supervisor = Supervisor(
                    config,
                    state=state,
                    journal=journal,
                    kernel=kernel,
                    processes=processes,
                    networker=networker,
                    files=files or LinuxFiles(),
                    images=kernel.images if isinstance(kernel, LinuxContainers) else None,
                )
                await inner.start(supervisor.run)
                tune_for_streaming()
                quart: ASGIApp = create_app(supervisor)
                guarded = quart if tokens is None else require_token(quart, tokens)
                app = asgi_with_close_fix(limit_heads(guarded))
                served = trio.Event()

                async def run_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                    try:
                        await hypercorn.trio.serve(
                            app,
                            # hypercorn owns (and closes) a duplicate of the unix socket
                            hypercorn_config(config, os.dup(unix.fileno()) if unix else None),
                            shutdown_trigger=shutdown.wait,
                            task_status=task_status,
                        )
                    finally:
                        served.set()

                binds: list[str] = await inner.start(run_http)
                log.info("serving binds=%s", binds)
                inner.start_soon(snapshots.run)
                inner.start_soon(trim_periodically, config.malloc_trim_every)
                if reporter is not None:
                    inner.start_soon(report_on_signal, reporter)
                task_status.started(binds)
                if config.handle_signals:
                    stops = (signal.SIGTERM, signal.SIGINT)
                    with trio.open_signal_receiver(*stops, signal.SIGHUP) as signals:
                        async for signum in signals:
                            if signum == signal.SIGHUP:
                                if tokens is not None:
                                    tokens.reload()
                                continue
                            log.info("shutdown-requested signal=%s", signal.Signals(signum).name)
                            break
                    shutdown.set()
                    # Let in-flight requests finish, then stop the actors: containers stay.
                    with trio.move_on_after(SHUTDOWN_GRACE):
                        await served.wait()
                    inner.cancel_scope.cancel()
                else:
                    await trio.sleep_forever()
            outer.cancel_scope.cancel()
    finally:
        # The journal has stopped: a last snapshot makes the next start replay nothing. It
        # is skipped if a failed apply left the state off the log. Bounded by the size of
        # the state (0.4 s for 1,000 containers that ran 100,000 processes).
        with trio.CancelScope(shield=True):
            await snapshots.write()
        event_log.close()
        log.info("stopped")
