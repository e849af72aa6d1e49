"""Commands of the server and the container life cycle: ping, capacity, list, create, info,
metrics, destroy, stop, grace-time, property, events."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Literal

from garden.cli.base import (
    EXIT_ERROR,
    EXIT_OK,
    Formatter,
    UsageError,
    make_client,
    parse_pairs,
    parse_seconds,
)
from garden.cli.render import (
    human_bytes,
    kv_lines,
    pairs,
    print_json,
    print_lines,
    seconds,
    write,
)

if TYPE_CHECKING:
    from garden.api import BindMount, ContainerInfo, ContainerMetrics, ErrorBody


def configure(name: str, p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Add the arguments of command `name` to its parser."""
    if name == "ping":
        p.set_defaults(func=ping)
    elif name == "capacity":
        p.set_defaults(func=capacity)
    elif name == "list":
        p.set_defaults(func=list_handles)
        p.add_argument(
            "-p",
            "--property",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="only containers with this property (repeatable: all must match)",
        )
    elif name == "create":
        _create_arguments(p)
    elif name == "info":
        p.set_defaults(func=info)
        p.add_argument("handles", nargs="+", metavar="HANDLE", help="several: one bulk_info")
    elif name == "metrics":
        p.set_defaults(func=metrics)
        p.add_argument("handles", nargs="+", metavar="HANDLE", help="several: one bulk_metrics")
    elif name == "destroy":
        p.set_defaults(func=destroy)
        p.add_argument("handles", nargs="+", metavar="HANDLE")
    elif name == "stop":
        p.set_defaults(func=stop)
        p.add_argument("handle", metavar="HANDLE")
        p.add_argument("--kill", action="store_true", help="SIGKILL at once instead of TERM first")
    elif name == "grace-time":
        p.set_defaults(func=grace_time)
        p.add_argument("handle", metavar="HANDLE")
        p.add_argument("duration", metavar="DURATION", help="e.g. 300, 5m; 0 = never reaped")
    elif name == "property":
        _property_arguments(p, common)
    elif name == "events":
        p.description = (
            "Print the server's event log (`--json`: its NDJSON records as they are). "
            "Offline, on --state-dir: `garden events verify` checks every record (checksum, "
            "format, sequence), replays the log and checks the snapshot against it (exit 1 on "
            "damage); `garden events repair` copies the valid prefix of a damaged log to "
            "events.log.repaired (the original is never changed)."
        )
        p.set_defaults(func=events)
        p.add_argument("action", nargs="?", choices=["repair", "verify"], help=argparse.SUPPRESS)
        p.add_argument(
            "--state-dir",
            default="/var/lib/garden",
            metavar="DIR",
            help="for `verify` and `repair`: the server's state dir",
        )
        p.add_argument(
            "--since", type=int, default=0, metavar="SEQ", help="after this sequence number"
        )
        p.add_argument("-f", "--follow", action="store_true", help="then wait for new events")
    else:
        raise AssertionError(name)


def _create_arguments(p: argparse.ArgumentParser) -> None:
    from garden.cli.limits import add_limit_option

    p.description = (
        "Create a container and print its handle (the one given, or one the server chose)."
    )
    p.set_defaults(func=create)
    p.add_argument("--handle", help="default: the server makes one")
    p.add_argument(
        "--rootfs",
        metavar="DIR|URI",
        help="host directory (the read-only lower layer) or image URI (docs/images.md)",
    )
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "-v",
        "--bind-mount",
        action="append",
        default=[],
        metavar="SRC:DST[:ro|rw][:host|container]",
        help="default ro, host",
    )
    p.add_argument(
        "--network", metavar="CIDR", help="a subnet (a.b.c.0/n) or an address (a.b.c.d/n)"
    )
    p.add_argument("-p", "--property", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--grace-time", metavar="DURATION", help="e.g. 300, 5m; 0 = never reaped (server default)"
    )
    p.add_argument(
        "--privileged",
        action="store_true",
        help="container root is root on the host (docs/security.md)",
    )
    add_limit_option(p)


def _property_arguments(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="{get,set,rm}")
    q = sub.add_parser(
        "get", parents=[common], help="one property, or all of them", formatter_class=Formatter
    )
    q.set_defaults(func=property_get)
    q.add_argument("handle", metavar="HANDLE")
    q.add_argument("key", nargs="?", metavar="KEY")
    q = sub.add_parser("set", parents=[common], help="set a property", formatter_class=Formatter)
    q.set_defaults(func=property_set)
    q.add_argument("handle", metavar="HANDLE")
    q.add_argument("key", metavar="KEY")
    q.add_argument("value", metavar="VALUE")
    q = sub.add_parser("rm", parents=[common], help="remove a property", formatter_class=Formatter)
    q.set_defaults(func=property_rm)
    q.add_argument("handle", metavar="HANDLE")
    q.add_argument("key", metavar="KEY")


def ping(args: argparse.Namespace) -> int:
    make_client(args).ping()
    if args.json:
        print_json({})
    else:
        print("ok")
    return EXIT_OK


def capacity(args: argparse.Namespace) -> int:
    cap = make_client(args).capacity()
    if args.json:
        print_json(cap)
        return EXIT_OK
    print_lines(
        kv_lines(
            [
                ("memory", f"{human_bytes(cap.memory_in_bytes)} ({cap.memory_in_bytes} bytes)"),
                ("disk", f"{human_bytes(cap.disk_in_bytes)} ({cap.disk_in_bytes} bytes)"),
                ("max containers", str(cap.max_containers)),
            ]
        )
    )
    return EXIT_OK


def list_handles(args: argparse.Namespace) -> int:
    filters = parse_pairs(args.property, "--property")
    handles = make_client(args).handles(filters)
    if args.json:
        from garden.api import HandlesReply

        print_json(HandlesReply(handles=handles))
    else:
        print_lines(handles)
    return EXIT_OK


def create(args: argparse.Namespace) -> int:
    from garden.api import ContainerSpec, HandleReply
    from garden.cli.limits import parse_limits

    spec = ContainerSpec(
        handle=args.handle,
        rootfs=args.rootfs,
        env=[_check_env(e) for e in args.env],
        bind_mounts=[parse_bind_mount(b) for b in args.bind_mount],
        network=args.network,
        properties=parse_pairs(args.property, "--property"),
        grace_time=parse_seconds(args.grace_time) if args.grace_time is not None else None,
        privileged=args.privileged,
        limits=parse_limits(args.limit),
    )
    handle = make_client(args).create(spec)
    if args.json:
        print_json(HandleReply(handle=handle))
    else:
        print(handle)
    return EXIT_OK


def _check_env(item: str) -> str:
    if "=" not in item or item.startswith("="):
        raise UsageError(f"--env: expected KEY=VALUE, got {item!r}")
    return item


def parse_bind_mount(text: str) -> BindMount:
    """`SRC:DST[:ro|rw][:host|container]` → a BindMount (default read-only, from the host)."""
    from garden.api import BindMount

    parts = text.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1] or len(parts) > 4:
        raise UsageError(f"--bind-mount: expected SRC:DST[:ro|rw][:host|container], got {text!r}")
    mode: Literal["RO", "RW"] = "RO"
    origin: Literal["Host", "Container"] = "Host"
    for extra in (x.lower() for x in parts[2:]):
        if extra == "ro" or extra == "rw":
            mode = "RO" if extra == "ro" else "RW"
        elif extra == "host" or extra == "container":
            origin = "Host" if extra == "host" else "Container"
        else:
            raise UsageError(f"--bind-mount: {extra!r} is neither ro/rw nor host/container")
    return BindMount(src_path=parts[0], dst_path=parts[1], mode=mode, origin=origin)


def info(args: argparse.Namespace) -> int:
    client = make_client(args)
    if len(args.handles) == 1:
        handle = args.handles[0]
        result = client.info(handle)
        if args.json:
            print_json(result)
        else:
            print_lines(info_lines(handle, result))
        return EXIT_OK
    entries = client.bulk_info(args.handles)
    if args.json:
        print_json(entries)
        return EXIT_OK
    status = EXIT_OK
    blocks: list[str] = []
    for handle in args.handles:
        entry = entries.get(handle)
        if entry is not None and entry.info is not None:
            blocks.append("\n".join(info_lines(handle, entry.info)))
        else:
            status = _report_missing(handle, entry.error if entry is not None else None)
    print("\n\n".join(blocks))
    return status


def info_lines(handle: str, i: ContainerInfo) -> list[str]:
    ports = ", ".join(f"{m.host_port}->{m.container_port}" for m in i.mapped_ports)
    rows = [
        ("handle", handle),
        ("state", i.state),
        ("events", ", ".join(i.events) or "-"),
        ("container_ip", i.container_ip or "-"),
        ("host_ip", i.host_ip or "-"),
        ("container_path", i.container_path),
        ("process_ids", ", ".join(i.process_ids) or "-"),
        ("properties", pairs(i.properties)),
        ("mapped_ports", ports or "-"),
        ("grace_time", seconds(i.grace_time)),
    ]
    rows += stat_rows(i)
    return kv_lines(rows)


def stat_rows(m: ContainerInfo | ContainerMetrics) -> list[tuple[str, str]]:
    return [
        (name, pairs(getattr(m, name)))
        for name in ("memory_stat", "cpu_stat", "disk_stat", "bandwidth_stat", "pids_stat")
        if getattr(m, name)
    ]


def metrics(args: argparse.Namespace) -> int:
    client = make_client(args)
    if len(args.handles) == 1:
        result = client.metrics(args.handles[0])
        if args.json:
            print_json(result)
        else:
            print_lines(kv_lines(stat_rows(result)))
        return EXIT_OK
    entries = client.bulk_metrics(args.handles)
    if args.json:
        print_json(entries)
        return EXIT_OK
    status = EXIT_OK
    blocks: list[str] = []
    for handle in args.handles:
        entry = entries.get(handle)
        if entry is not None and entry.metrics is not None:
            blocks.append("\n".join(kv_lines([("handle", handle), *stat_rows(entry.metrics)])))
        else:
            status = _report_missing(handle, entry.error if entry is not None else None)
    print("\n\n".join(blocks))
    return status


def _report_missing(handle: str, error: ErrorBody | None) -> int:
    message = f"{error.type}: {error.message}" if error else "missing from the answer"
    print(f"garden: {handle}: {message}", file=sys.stderr)
    return EXIT_ERROR


def destroy(args: argparse.Namespace) -> int:
    from garden.errors import GardenError

    client = make_client(args)
    status = EXIT_OK
    for handle in args.handles:
        try:
            client.destroy(handle)
        except GardenError as exc:
            if len(args.handles) == 1:
                raise
            print(f"garden: {handle}: {exc.kind}: {exc.message}", file=sys.stderr)
            status = EXIT_ERROR
    if args.json:
        print_json({})
    return status


def stop(args: argparse.Namespace) -> int:
    make_client(args).stop(args.handle, kill=args.kill)
    if args.json:
        print_json({})
    return EXIT_OK


def grace_time(args: argparse.Namespace) -> int:
    make_client(args).set_grace_time(args.handle, parse_seconds(args.duration))
    if args.json:
        print_json({})
    return EXIT_OK


def property_get(args: argparse.Namespace) -> int:
    client = make_client(args)
    if args.key is None:
        props = client.properties(args.handle)
        if args.json:
            print_json(props)
        else:
            print_lines([f"{k}={v}" for k, v in sorted(props.items())])
        return EXIT_OK
    value = client.get_property(args.handle, args.key)
    if args.json:
        from garden.api import PropertyValue

        print_json(PropertyValue(value=value))
    else:
        print(value)
    return EXIT_OK


def property_set(args: argparse.Namespace) -> int:
    make_client(args).set_property(args.handle, args.key, args.value)
    if args.json:
        print_json({})
    return EXIT_OK


def property_rm(args: argparse.Namespace) -> int:
    make_client(args).delete_property(args.handle, args.key)
    if args.json:
        print_json({})
    return EXIT_OK


def events(args: argparse.Namespace) -> int:
    if args.action == "repair":
        return repair_log(args)
    if args.action == "verify":
        return verify_log(args)
    with make_client(args).events(args.since, follow=args.follow) as stream:
        if args.json:
            for line in stream.lines():
                write(line + b"\n")
            return EXIT_OK
        for record in stream:
            event = record.event
            handle = getattr(event, "handle", "")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.time))
            who = record.origin.request_id or "-"
            print(
                f"{record.seq:>8}  {when}  {type(event).__name__:<24}  {handle or '-':<20}  {who}"
            )
            sys.stdout.flush()
    return EXIT_OK


def verify_log(args: argparse.Namespace) -> int:
    """Offline: every finding of `garden.events.verify` (one a line, or the report as JSON);
    exit 1 if any is damage."""
    from pathlib import Path

    from garden.events.verify import verify

    path = Path(args.state_dir, "events.log")
    if not path.is_file():
        raise UsageError(f"no event log at {path}")
    report = verify(Path(args.state_dir))
    if args.json:
        print_json(report)
        return EXIT_OK if report.ok else EXIT_ERROR
    for f in report.findings:
        where = " ".join(
            part
            for part in (
                f"byte {f.offset}" if f.offset is not None else "",
                f"seq {f.seq}" if f.seq is not None else "",
            )
            if part
        )
        level = "error" if f.is_error else "warning"
        print(f"{level}: {f.kind}{f' at {where}' if where else ''}: {f.detail}")
    snapshot = f"snapshot at seq {report.snapshot_seq}" if report.snapshot_seq else "no snapshot"
    verdict = "ok" if report.ok else "DAMAGED"
    print(
        f"{verdict}: {report.records} records up to seq {report.last_seq}, {report.bytes} bytes, "
        f"{report.containers} containers after replay, {snapshot}"
    )
    return EXIT_OK if report.ok else EXIT_ERROR


def repair_log(args: argparse.Namespace) -> int:
    """Offline: copy the valid prefix of `<state-dir>/events.log` aside and say what was cut."""
    from pathlib import Path

    from garden.events.log import repair

    path = Path(args.state_dir, "events.log")
    if not path.is_file():
        raise UsageError(f"no event log at {path}")
    report = repair(path)
    if args.json:
        print_json(report)
        return EXIT_OK
    rows = [
        ("source", report.source),
        ("repaired", report.repaired),
        ("kept", f"{report.kept_records} records up to seq {report.last_seq}"),
        ("dropped", f"{report.dropped_bytes} bytes, {report.dropped_valid} valid records"),
        ("damage", f"at byte {report.damage_offset}: {report.reason}" if report.reason else "none"),
    ]
    print_lines(kv_lines(rows))
    if report.damage_offset is not None:
        print(
            f"Inspect it, then with the server stopped: mv {report.repaired} {report.source}",
            file=sys.stderr,
        )
    return EXIT_OK
