"""The server's allocator (garden/allocator.py): the re-exec with jemalloc preloaded, the
environment put back for the server's children, and glibc when jemalloc is missing or not
wanted."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from garden import allocator, malloc

JEMALLOC = allocator.find_jemalloc()
needs_jemalloc = pytest.mark.skipif(
    JEMALLOC is None, reason="libjemalloc2 is not installed (scripts/setup.sh installs it)"
)


class Execed(Exception):
    pass


def no_exec(path: str, argv: list[str], env: dict[str, str]) -> NoReturn:
    raise Execed(path, argv, env)


def test_reexec_env_preloads_and_remembers_what_to_put_back() -> None:
    env = allocator.reexec_env({"PATH": "/bin", "LD_PRELOAD": "/x.so"}, "/lib/je.so")
    assert env["LD_PRELOAD"] == "/lib/je.so:/x.so"
    assert env["MALLOC_CONF"] == allocator.JEMALLOC_CONF
    allocator.restore_env(env)
    assert env == {"PATH": "/bin", "LD_PRELOAD": "/x.so"}


def test_an_operators_malloc_conf_wins_and_is_kept() -> None:
    env = allocator.reexec_env({"MALLOC_CONF": "narenas:1"}, "/lib/je.so")
    assert env["MALLOC_CONF"] == "narenas:1"
    allocator.restore_env(env)
    assert env == {"MALLOC_CONF": "narenas:1"}


def test_restore_removes_what_was_not_set_before() -> None:
    env = allocator.reexec_env({"PATH": "/bin"}, "/lib/je.so")
    assert allocator.restore_env(env) is True
    assert env == {"PATH": "/bin"}
    assert allocator.restore_env(env) is False  # not a re-exec (any more)


def test_glibc_asked_for_never_reexecs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "execve", no_exec)
    allocator.choose("glibc")


def test_missing_library_runs_on_and_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(os, "execve", no_exec)
    monkeypatch.setattr(allocator, "active", lambda: "glibc")
    missing = str(tmp_path / "libjemalloc.so.2")
    allocator.choose("jemalloc", missing)  # returns: nothing to preload
    with caplog.at_level(logging.INFO, logger="garden.allocator"):
        assert allocator.report("jemalloc", missing) == "glibc"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "reason=jemalloc-not-found" in record.getMessage() and missing in record.getMessage()


@pytest.fixture
def library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A jemalloc library file in a process running glibc whose exec is caught (`Execed`)."""
    path = tmp_path / "libjemalloc.so.2"
    path.touch()
    monkeypatch.setattr(os, "execve", no_exec)
    monkeypatch.setattr(allocator, "active", lambda: "glibc")
    return path


def test_a_found_library_is_preloaded_by_exec_of_the_same_command(
    monkeypatch: pytest.MonkeyPatch, library: Path
) -> None:
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "garden.cli", "server", "--x"])
    monkeypatch.delenv("GARDEN_MALLOC_REEXEC", raising=False)
    with pytest.raises(Execed) as e:
        allocator.choose("jemalloc", str(library))
    path, argv, env = e.value.args
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "garden.cli", "server", "--x"]
    assert env["LD_PRELOAD"].split(":")[0] == str(library)
    assert json.loads(env["GARDEN_MALLOC_REEXEC"]).keys() == {"LD_PRELOAD", "MALLOC_CONF"}


def test_a_reexeced_process_does_not_exec_again(
    monkeypatch: pytest.MonkeyPatch, library: Path
) -> None:
    """Even when the preload did not take (ld.so ignores a library it cannot load)."""
    monkeypatch.setenv("GARDEN_MALLOC_REEXEC", json.dumps({"LD_PRELOAD": None}))
    monkeypatch.setenv("LD_PRELOAD", str(library))
    allocator.choose("jemalloc", str(library))
    assert "LD_PRELOAD" not in os.environ


PROBE = """
import os, subprocess
from garden import allocator, malloc
allocator.choose("jemalloc")
child = subprocess.run(["sh", "-c", "echo $LD_PRELOAD,$MALLOC_CONF,$GARDEN_MALLOC_REEXEC"],
    capture_output=True, text=True, check=True).stdout.strip()
stats = allocator.jemalloc_stats()
assert 0 < stats["allocated"] <= stats["active"] <= stats["resident"], stats
print(os.getpid(), allocator.active(), malloc._libc() is None, repr(child))
"""


@needs_jemalloc
def test_the_process_reexecs_itself_with_jemalloc_and_its_children_do_not_inherit_it() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE], stdout=subprocess.PIPE, text=True, env=env
    )
    out, _ = proc.communicate(timeout=60)
    pid, active, glibc_off, child = out.split()
    assert int(pid) == proc.pid  # the same process, exec'd again
    assert active == "jemalloc"
    assert glibc_off == "True"  # no mallopt or malloc_trim on a heap that is not in use
    assert child == "',,'"


def test_glibc_is_what_runs_without_the_preload() -> None:
    # The test process itself (pytest is not re-executed).
    if allocator.active() == "glibc":
        assert malloc._libc() is not None
        assert allocator.jemalloc_stats() == {}
    else:
        pytest.skip("the test run itself has jemalloc preloaded")


@pytest.mark.parametrize(
    ("argv", "chosen"),
    [
        (["server", "--bind-port", "1"], [("jemalloc", "")]),
        (["server", "--malloc", "glibc"], [("glibc", "")]),
        (["server", "--malloc=glibc", "--malloc", "jemalloc"], [("jemalloc", "")]),
        (["server", "--jemalloc-path", "/x.so", "--malloc-trim-every", "0"],
         [("jemalloc", "/x.so")]),
        (["server", "--jemalloc-path=/x.so"], [("jemalloc", "/x.so")]),
        (["server", "--malloc", "tcmalloc"], []),  # argparse refuses it afterwards
    ],
)  # fmt: skip
def test_the_choice_is_read_from_the_command_line_before_argparse(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], chosen: list[tuple[str, str]]
) -> None:
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(allocator, "choose", lambda m, p="": calls.append((m, p)))
    allocator.choose_for_argv(argv)
    assert calls == chosen
