"""`garden server`: its flags, turned into a validated `ServerConfig`, and running it."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from garden.config import ServerConfig


def configure(name: str, p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Add the flags of `garden server` to its parser (the client options do not apply)."""
    from garden.config import DEFAULT_ROOTFS, DEFAULT_STATE_DIR, ServerConfig

    assert name == "server", name
    p.description = "Run the Garden API server (as root). docs/operations.md explains each flag."
    p.set_defaults(func=run)
    d = ServerConfig()
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="all persistent state")
    p.add_argument("--bind-ip", default=d.bind_ip)
    p.add_argument(
        "--bind-port", type=int, default=d.bind_port, help="0 with --bind-socket: no TCP"
    )
    p.add_argument("--bind-socket", default=None, metavar="PATH", help="also listen here (0660)")
    p.add_argument(
        "--bind-socket-group",
        default=None,
        metavar="GROUP",
        help="group of the unix socket: its members may connect (default: root's group)",
    )
    p.add_argument(
        "--auth-token-file",
        default=None,
        metavar="PATH",
        help="require `Authorization: Bearer <token>` on every route but /ping; one token a "
        "line, reread on SIGHUP; the file must not be readable by others",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        metavar="N",
        help="largest JSON request body (413 beyond); file uploads and stdin are streamed",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=d.keep_alive_timeout,
        metavar="SECONDS",
        help="close a connection without a complete request head after this long",
    )
    p.add_argument("--network-pool", default=d.network_pool, metavar="CIDR")
    p.add_argument("--port-pool-start", type=int, default=d.port_pool_start, metavar="N")
    p.add_argument("--port-pool-size", type=int, default=d.port_pool_size, metavar="N")
    p.add_argument(
        "--deny-network", action="append", default=[], metavar="CIDR", dest="deny_networks"
    )
    p.add_argument(
        "--dns-server",
        action="append",
        default=[],
        metavar="IP",
        dest="dns_servers",
        help="nameserver for containers (repeatable; default: the host's, minus loopback ones)",
    )
    p.add_argument(
        "--no-ip-forward",
        action="store_false",
        dest="ip_forward",
        help="leave net.ipv4.ip_forward alone (containers then reach only this host)",
    )
    p.add_argument(
        "--mtu",
        type=int,
        default=d.mtu,
        metavar="N",
        help="MTU of container links (0 = that of the host's default route)",
    )
    p.add_argument(
        "--default-grace-time",
        type=float,
        default=d.default_grace_time,
        metavar="SECONDS",
        help="0 = never reaped",
    )
    p.add_argument("--max-containers", type=int, default=d.max_containers, metavar="N")
    p.add_argument("--default-rootfs", default=DEFAULT_ROOTFS, metavar="DIR")
    p.add_argument("--runtime", choices=["auto", "crun", "runc"], default=d.runtime)
    p.add_argument(
        "--process-output",
        choices=["passthrough", "k8s-file"],
        default=d.process_output,
        help="how new non-TTY processes keep their output: raw files (passthrough) or "
        "conmon's k8s-file log (docs/processes.md)",
    )
    p.add_argument(
        "--process-monitor",
        choices=["auto", "garden-monitor", "conmon"],
        default=d.process_monitor,
        help="what monitors a batch process (no stdin, no TTY): garden-monitor (~4 ms faster "
        "to start) or conmon; auto: garden-monitor when installed (docs/processes.md)",
    )
    p.add_argument(
        "--process-exec",
        choices=["auto", "runtime"],
        default=d.process_exec,
        help="who execs a batch process under garden-monitor into its container: garden-monitor "
        "itself (auto, ~5 ms faster; the runtime where it keeps no compiled seccomp filter, "
        "as runc) or always the runtime's exec (docs/processes.md)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=d.log_format,
        help="text: key=value lines; json: one JSON object per line",
    )
    p.add_argument(
        "--tag",
        default=d.tag,
        help="prefix of the kernel resources this server makes (cgroups, links, rules)",
    )
    p.add_argument(
        "--uid-base",
        type=int,
        default=d.uid_base,
        help="host uid of root in unprivileged containers",
    )
    p.add_argument(
        "--disallow-privileged-containers",
        action="store_true",
        help="refuse privileged containers (root in them is root on the host) with a 403",
    )
    p.add_argument("--stop-timeout", type=float, default=d.stop_timeout, metavar="SECONDS")
    p.add_argument(
        "--docker-registry",
        default=d.docker_registry,
        metavar="HOST[:PORT]",
        help="the registry of docker:///name rootfs URIs (default: Docker Hub)",
    )
    p.add_argument(
        "--insecure-docker-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        dest="insecure_docker_registries",
        help="a registry to pull from over plain http (repeatable)",
    )
    p.add_argument(
        "--registry-timeout",
        type=float,
        default=d.registry_timeout,
        metavar="SECONDS",
        help="a registry's time to connect, and then to answer each read",
    )
    p.add_argument(
        "--registry-auth-file",
        default=d.registry_auth_file,
        metavar="PATH",
        help="a Docker config.json whose auths give registry credentials (re-read when changed)",
    )
    p.add_argument(
        "--malloc-trim-every",
        type=float,
        default=d.malloc_trim_every,
        metavar="SECONDS",
        help="with glibc's malloc: give free heap memory back to the kernel this often (0: never)",
    )
    p.add_argument(
        "--malloc",
        choices=("jemalloc", "glibc"),
        default=d.malloc,
        help="the server's allocator: jemalloc (re-executes itself with the library preloaded; "
        "glibc's, with a warning, when it is missing) or glibc",
    )
    p.add_argument(
        "--jemalloc-path",
        default=d.jemalloc_path,
        metavar="PATH",
        help="the jemalloc library (default: the first libjemalloc.so.2 in the usual places)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The validated `ServerConfig` of the parsed flags (a ConfigError if one cannot work)."""
    import msgspec

    from garden.config import ConfigError, ServerConfig, validate

    fields = set(ServerConfig.__struct_fields__)
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["deny_networks"] = tuple(values.get("deny_networks", ()))
    values["dns_servers"] = tuple(values.get("dns_servers", ()))
    values["insecure_docker_registries"] = tuple(values.get("insecure_docker_registries", ()))
    try:
        config = msgspec.convert(values, ServerConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from exc
    return validate(config)


def run(args: argparse.Namespace) -> int:
    from garden.config import ConfigError

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        args.parser.error(str(exc))
    return run_server(config)


def run_server(config: ServerConfig) -> int:
    import trio

    from garden.allocator import report
    from garden.config import ConfigError
    from garden.errors import LogCorruptError, RuntimeFailedError
    from garden.logs import configure
    from garden.main import serve

    configure(config.log_level, config.log_format)
    report(config.malloc, config.jemalloc_path)
    try:
        trio.run(serve, config)
    except LogCorruptError as exc:
        print(
            f"garden: {exc}\nRun `garden events repair --state-dir {config.state_dir}` to copy "
            "the valid prefix aside.",
            file=sys.stderr,
        )
        return 3
    except RuntimeFailedError as exc:
        print(f"garden: {exc}", file=sys.stderr)
        return 4
    except ConfigError as exc:
        print(f"garden server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
