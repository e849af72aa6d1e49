"""What the CLI makes of its arguments, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from garden.api import BindMount, CpuLimits, DiskLimits, Limits, MemoryLimits, PidLimits
from garden.cli import COMMANDS, build_parser, command_name, main, split_command
from garden.cli.base import UsageError, parse_seconds, parse_size
from garden.cli.containers import parse_bind_mount
from garden.cli.limits import limit_fields, parse_limits


@pytest.mark.parametrize(
    ("text", "size"),
    [("1024", 1024), ("512k", 512 << 10), ("64M", 64 << 20), ("1.5GiB", 3 << 29), ("2g", 2 << 30)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "seconds"), [("30", 30), ("1.5", 1.5), ("5m", 300), ("2h", 7200)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "M", "-1", "5x", "1e3"])
def test_bad_sizes_and_durations(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)
    with pytest.raises(UsageError):
        parse_seconds(text)


def test_limits() -> None:
    assert parse_limits([]) is None
    assert parse_limits(
        ["memory=64M", "cpu=512", "pids=100", "disk.inode_hard=10", "disk=1G"]
    ) == Limits(
        memory=MemoryLimits(limit_in_bytes=64 << 20),
        cpu=CpuLimits(limit_in_shares=512),
        pids=PidLimits(max=100),
        disk=DiskLimits(inode_hard=10, byte_hard=1 << 30),
    )
    assert limit_fields("bandwidth", ["1M", "burst=64K"]) == {"rate": 1 << 20, "burst": 64 << 10}
    for bad in (["memory"], ["gpu=1"], ["memory.nope=1"], ["cpu=1.5"]):
        with pytest.raises(UsageError):
            parse_limits(bad)


def test_bind_mounts() -> None:
    assert parse_bind_mount("/a:/b") == BindMount(src_path="/a", dst_path="/b")
    assert parse_bind_mount("/a:/b:rw:container") == BindMount(
        src_path="/a", dst_path="/b", mode="RW", origin="Container"
    )
    for bad in ("/a", ":/b", "/a:/b:rx", "/a:/b:ro:host:x"):
        with pytest.raises(UsageError):
            parse_bind_mount(bad)


def test_the_command_line_of_run_is_taken_verbatim() -> None:
    argv = ["--json", "run", "-i", "H", "--", "sh", "-c", "echo $0", "--", "--json"]
    head, tail = split_command(argv)
    assert command_name(head) == "run"
    assert tail == ["sh", "-c", "echo $0", "--", "--json"]
    assert command_name(["--target", "http://x", "list"]) == "list"
    assert command_name(["--timeout", "3", "--json"]) is None


def test_every_command_has_a_parser_and_a_handler() -> None:
    for name in COMMANDS:
        parser = build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "subcommand")
        p = sub.choices[name]  # type: ignore[index]
        assert p.get_default("func") is not None or name == "property", name


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "h"]) == 2
    assert "no command" in capsys.readouterr().err
    assert main(["create", "-e", "NOEQUALS", "--target", "http://127.0.0.1:9"]) == 2
    assert main(["list", "--target", "ftp://nope"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["nope"])
    assert exc.value.code == 2


def test_no_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "--target", "http://127.0.0.1:9"]) == 1
    assert "ServerUnreachableError" in capsys.readouterr().err


def test_events_repair_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "events.log"
    log.write_bytes(b"not a record\n")
    assert main(["events", "repair", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kept      0 records" in out and "malformed" in out
    assert (tmp_path / "events.log.repaired").read_bytes() == b""
    assert log.read_bytes() == b"not a record\n"
    assert main(["events", "repair", "--state-dir", str(tmp_path / "none")]) == 2
