"""`garden images` (list the server's image store), `garden images import URI` (with a
progress bar on a terminal) and `garden images prune`."""

from __future__ import annotations

import argparse
import sys

from garden.cli.base import EXIT_ERROR, EXIT_OK, make_client
from garden.cli.render import human_bytes, print_json, print_lines, table_lines


def configure(name: str, p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    assert name == "images", name
    p.set_defaults(func=list_images)
    sub = p.add_subparsers(dest="images_command", metavar="ACTION")
    imp = sub.add_parser(
        "import", parents=[common], help="import an image (oci:, oci-archive:, docker-archive:)"
    )
    imp.add_argument("uri", metavar="URI")
    imp.set_defaults(func=import_image)
    prune = sub.add_parser("prune", parents=[common], help="remove what no container uses")
    prune.set_defaults(func=prune_images)


def list_images(args: argparse.Namespace) -> int:
    reply = make_client(args).images()
    if args.json:
        print_json(reply)
        return EXIT_OK
    rows = [
        [
            i.digest[7:19],
            ",".join(i.tags) or "-",
            str(len(i.layers)),
            human_bytes(i.size),
            str(i.in_use),
            i.source,
        ]
        for i in reply.images
    ]
    lines = table_lines(["DIGEST", "TAGS", "LAYERS", "SIZE", "IN USE", "SOURCE"], rows)
    total = sum(layer.size for layer in reply.layers)
    lines.append(f"{len(reply.layers)} layers, {human_bytes(total)}")
    print_lines(lines)
    return EXIT_OK


def _bar(done: int, total: int, width: int = 30) -> str:
    if total <= 0:
        return f"{human_bytes(done)} read"
    filled = min(width, done * width // total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {human_bytes(done)}/{human_bytes(total)}"


def import_image(args: argparse.Namespace) -> int:
    tty = sys.stderr.isatty()
    last = None
    for line in make_client(args).import_image(args.uri):
        if line.error is not None:
            if tty:
                sys.stderr.write("\n")
            sys.stderr.write(f"garden: {line.error.get('type')}: {line.error.get('message')}\n")
            return EXIT_ERROR
        if line.image is not None:
            last = line.image
            continue
        if tty:
            step = f"layer {min(line.layer + 1, line.layers)}/{line.layers}"
            sys.stderr.write(f"\r{step} {_bar(line.bytes, line.size)}\x1b[K")
            sys.stderr.flush()
    if tty:
        sys.stderr.write("\n")
    if last is None:
        sys.stderr.write("garden: the server ended the import without an answer\n")
        return EXIT_ERROR
    if args.json:
        print_json(last)
    else:
        print_lines([last.digest])
    return EXIT_OK


def prune_images(args: argparse.Namespace) -> int:
    reply = make_client(args).prune_images()
    if args.json:
        print_json(reply)
    else:
        print_lines(
            [
                f"removed {len(reply.images)} images, {len(reply.layers)} layers, "
                f"{human_bytes(reply.bytes)}"
            ]
        )
    return EXIT_OK
