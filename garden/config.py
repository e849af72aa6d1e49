"""Server configuration: one frozen struct, built from the command line by `garden.cli`."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal, final

import msgspec

from garden import bounds

DEFAULT_ROOTFS = "/usr/local/lib/garden/rootfs"
DEFAULT_STATE_DIR = "/var/lib/garden"
# Host uid/gid of root in every unprivileged container: one shared 65536-wide range, far above
# the ranges that /etc/subuid hands to users (see docs/security.md).
DEFAULT_UID_BASE = 1_000_000_000
TAG_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
# conmon's attach sockets live in <this>/<tag> (short: a socket path has 108 bytes).
MONITOR_SOCKET_ROOT = "/run/garden-trio"
DEFAULT_DOCKER_REGISTRY = "registry-1.docker.io"  # Docker Hub, as in Garden
REGISTRY_RE = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?")


@final
class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    state_dir: str = DEFAULT_STATE_DIR
    bind_ip: str = "127.0.0.1"
    bind_port: int = 7777
    bind_socket: str | None = None
    # The group that may connect to the unix socket (mode 0660); None: root's group.
    bind_socket_group: str | None = None
    # A file holding the bearer token(s) every route but /ping requires (docs/security.md).
    auth_token_file: str | None = None
    # Largest JSON request body (413 beyond); uploads and stdin stream and are not bounded here.
    max_body_bytes: int = bounds.MAX_BODY_BYTES
    # Seconds a connection may sit without a complete request head (idle or trickling).
    keep_alive_timeout: float = bounds.KEEP_ALIVE_TIMEOUT
    network_pool: str = "10.254.0.0/22"
    port_pool_start: int = 61001
    port_pool_size: int = 4000
    deny_networks: tuple[str, ...] = ()
    # Nameservers for containers' /etc/resolv.conf; empty: the host's, without loopback ones.
    dns_servers: tuple[str, ...] = ()
    # Set net.ipv4.ip_forward at start, so containers can reach other machines (tests: off).
    ip_forward: bool = True
    # MTU of containers' links; 0: that of the host's default route.
    mtu: int = 0
    default_grace_time: float = 0.0
    max_containers: int = 1024
    default_rootfs: str = DEFAULT_ROOTFS
    runtime: Literal["auto", "runc", "crun"] = "auto"
    # How new non-TTY processes keep their output (docs/processes.md#output): raw files the
    # process writes itself plus an order index, or conmon's k8s-file log. TTYs and processes
    # started before a change keep theirs.
    process_output: Literal["passthrough", "k8s-file"] = "passthrough"
    # Which monitor runs a batch process (passthrough output, no stdin, no TTY): our small
    # garden-monitor (built by scripts/setup.sh), or conmon; "auto": garden-monitor when it is
    # installed. Processes with stdin or a TTY always run under conmon.
    process_monitor: Literal["auto", "garden-monitor", "conmon"] = "auto"
    # Who execs a batch process into its container: garden-monitor itself ("auto", where it
    # can: docs/adr/garden-monitor-exec.md), or the OCI runtime's `exec` ("runtime").
    process_exec: Literal["auto", "runtime"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    # Prefix of every kernel resource this server makes (cgroup parent, later bridges, veths,
    # nft table). Tests give each server its own, so they never touch a running server's.
    tag: str = "garden"
    uid_base: int = DEFAULT_UID_BASE
    # Refuse creates with `privileged: true` (403 PrivilegedContainersDisallowedError).
    disallow_privileged_containers: bool = False
    stop_timeout: float = 10.0
    # When False (tests, benchmarks) SIGTERM/SIGINT are not hooked.
    handle_signals: bool = True
    # A snapshot of the state is written every this many records (and at shutdown), so a
    # start replays at most about this many (docs/events.md#snapshots).
    snapshot_every: int = 20_000
    # Registry images (docs/images.md): the registry of `docker:///name`, the registries
    # spoken to over plain http, and the seconds a registry has to connect and then to answer
    # each read.
    docker_registry: str = DEFAULT_DOCKER_REGISTRY
    insecure_docker_registries: tuple[str, ...] = ()
    registry_timeout: float = 30.0
    # A Docker config.json whose `auths` give the server's registry credentials ("" for none).
    registry_auth_file: str = ""
    # Free heap pages are given back to the kernel every this many seconds (0: never), so RSS
    # follows what is in use (garden/malloc.py).
    malloc_trim_every: float = 30.0
    # The allocator `garden server` runs with (garden/allocator.py): jemalloc, preloaded by a
    # re-exec at start when its library is found (`jemalloc_path`, "" to look in the usual
    # places), or glibc's.
    malloc: Literal["jemalloc", "glibc"] = "jemalloc"
    jemalloc_path: str = ""

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.tag}"


class ConfigError(ValueError):
    """A flag value that cannot work; the message says which and why."""


def validate(config: ServerConfig) -> ServerConfig:
    try:
        ipaddress.ip_address(config.bind_ip)
    except ValueError as exc:
        raise ConfigError(f"--bind-ip: {exc}") from exc
    if not 0 <= config.bind_port <= 65535:
        raise ConfigError(f"--bind-port: {config.bind_port} is not a TCP port")
    try:
        pool = ipaddress.ip_network(config.network_pool, strict=True)
    except ValueError as exc:
        raise ConfigError(f"--network-pool: {exc}") from exc
    if pool.version != 4 or pool.prefixlen > 30:
        raise ConfigError("--network-pool: must be an IPv4 network of /30 or larger")
    for net in config.deny_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ConfigError(f"--deny-network: {exc}") from exc
    for server in config.dns_servers:
        try:
            ipaddress.ip_address(server)
        except ValueError as exc:
            raise ConfigError(f"--dns-server: {exc}") from exc
    if not 1 <= config.port_pool_start <= 65535 or config.port_pool_size < 0:
        raise ConfigError("--port-pool-start/--port-pool-size: out of range")
    if config.port_pool_start + config.port_pool_size - 1 > 65535:
        raise ConfigError("--port-pool-start + --port-pool-size runs past port 65535")
    if config.mtu and not 576 <= config.mtu <= 65535:
        raise ConfigError("--mtu: must be 576-65535 (0: that of the default route)")
    if config.default_grace_time < 0:
        raise ConfigError("--default-grace-time: must be >= 0 (0 means never)")
    if config.max_containers < 0:
        raise ConfigError("--max-containers: must be >= 0")
    if not TAG_RE.fullmatch(config.tag):
        raise ConfigError("--tag: 1-8 characters of [a-z0-9], starting with a letter")
    if config.bind_socket_group is not None:
        group_id(config.bind_socket_group)
    if config.max_body_bytes < 1024:
        raise ConfigError("--max-body-bytes: must be at least 1024")
    if not 1 <= config.keep_alive_timeout <= 3600:
        raise ConfigError("--keep-alive-timeout: must be 1-3600 seconds")
    if not 1 <= config.uid_base <= 2**32 - 2 - 65536:
        raise ConfigError("--uid-base: out of range")
    for registry in (config.docker_registry, *config.insecure_docker_registries):
        if not REGISTRY_RE.fullmatch(registry):
            raise ConfigError(f"--docker-registry/--insecure-docker-registry: bad {registry!r}")
    if not 0 < config.registry_timeout <= 3600:
        raise ConfigError("--registry-timeout: must be > 0 and <= 3600 seconds")
    if config.registry_auth_file:
        from garden.linux.images.auth import AuthFileError, RegistryAuth

        try:
            RegistryAuth(config.registry_auth_file)
        except AuthFileError as e:
            raise ConfigError(f"--registry-auth-file: {e}") from e
    if config.malloc_trim_every < 0:
        raise ConfigError("--malloc-trim-every: must be >= 0 (0 means never)")
    return config


def group_id(group: str) -> int:
    """The gid of a group name or number (ConfigError if the host has no such group)."""
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        pass
    if group.isdigit():
        return int(group)
    raise ConfigError(f"--bind-socket-group: no group {group!r} on this host")
