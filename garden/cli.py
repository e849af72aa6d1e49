"""The `garden` command: `garden server` runs the server (client commands join later)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import msgspec

from garden.config import DEFAULT_ROOTFS, DEFAULT_STATE_DIR, ConfigError, ServerConfig, validate


def server_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("server", help="run the Garden API server")
    d = ServerConfig()
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="all persistent state")
    p.add_argument("--bind-ip", default=d.bind_ip)
    p.add_argument("--bind-port", type=int, default=d.bind_port)
    p.add_argument("--bind-socket", default=None, metavar="PATH", help="also listen here (0660)")
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
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
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
    p.add_argument("--stop-timeout", type=float, default=d.stop_timeout, metavar="SECONDS")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    fields = {f for f in ServerConfig.__struct_fields__}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["deny_networks"] = tuple(values.get("deny_networks", ()))
    values["dns_servers"] = tuple(values.get("dns_servers", ()))
    try:
        config = msgspec.convert(values, ServerConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from exc
    return validate(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="garden", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    server_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "server":
        try:
            config = config_from_args(args)
        except ConfigError as exc:
            parser.error(str(exc))
        return run_server(config)
    return 2


def run_server(config: ServerConfig) -> int:
    import trio

    from garden.errors import LogCorruptError, RuntimeFailedError
    from garden.main import serve

    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        trio.run(serve, config)
    except LogCorruptError as exc:
        print(
            f"garden: {exc}\nRun `garden events repair` to copy the valid prefix.", file=sys.stderr
        )
        return 3
    except RuntimeFailedError as exc:
        print(f"garden: {exc}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
