"""`garden net-in` (map a host port to a container port) and `garden net-out` (allow traffic
to a network that `--deny-network` closes)."""

from __future__ import annotations

import argparse

from garden.cli.base import EXIT_OK, UsageError, make_client
from garden.cli.render import kv_lines, print_json, print_lines


def configure(name: str, p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Add the arguments of command `name` to its parser."""
    if name == "net-in":
        p.description = (
            "Forward a host port to a container port; 0 or absent: the server picks. Prints the "
            "ports in force."
        )
        p.set_defaults(func=net_in)
        p.add_argument("handle", metavar="HANDLE")
        p.add_argument("--host-port", type=int, default=0, metavar="PORT")
        p.add_argument("--container-port", type=int, default=0, metavar="PORT")
    elif name == "net-out":
        p.description = "Open a hole in the server's --deny-network for this container."
        p.set_defaults(func=net_out)
        p.add_argument("handle", metavar="HANDLE")
        p.add_argument("--network", metavar="CIDR|A-B", help="a.b.c.d/n or a.b.c.d-e.f.g.h")
        p.add_argument("--port", type=int, metavar="PORT")
        p.add_argument("--port-range", metavar="A:B")
        p.add_argument("--protocol", choices=["tcp", "udp", "icmp", "all"])
        p.add_argument("--icmp-type", type=int, metavar="N")
        p.add_argument("--icmp-code", type=int, metavar="N")
        p.add_argument("--log", action="store_true", help="log the packets that match")
    else:
        raise AssertionError(name)


def net_in(args: argparse.Namespace) -> int:
    mapping = make_client(args).net_in(args.handle, args.host_port, args.container_port)
    if args.json:
        print_json(mapping)
    else:
        print_lines(
            kv_lines(
                [
                    ("host_port", str(mapping.host_port)),
                    ("container_port", str(mapping.container_port)),
                ]
            )
        )
    return EXIT_OK


def net_out(args: argparse.Namespace) -> int:
    from garden.api import NetOutRule

    if args.port is not None and args.port_range is not None:
        raise UsageError("--port and --port-range exclude each other")
    rule = NetOutRule(
        network=args.network,
        port=args.port,
        port_range=args.port_range,
        protocol=args.protocol,
        icmp_type=args.icmp_type,
        icmp_code=args.icmp_code,
        log=args.log,
    )
    make_client(args).net_out(args.handle, rule)
    if args.json:
        print_json({})
    return EXIT_OK
