"""process_spec: env merge, capabilities, rlimits, the process object, PATH lookup in a rootfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from garden.errors import ExecutableNotFoundError, InvalidRequestError
from garden.linux import process_spec as ps
from garden.linux.oci import PRIVILEGED_CAPS, UNPRIVILEGED_CAPS


def test_env_later_wins_in_first_position() -> None:
    merged = ps.merge_env(["A=1", "PATH=/bin", "B=2"], ["B=3", "C=4", "A=5"])
    assert merged == ["A=5", "PATH=/bin", "B=3", "C=4"]


def test_env_defaults_fill_only_missing_names() -> None:
    merged = ps.merge_env(["PATH=/x"], ["HOME=/h"], defaults=["HOME=/root", "USER=root", "PATH=/y"])
    assert merged == ["PATH=/x", "HOME=/h", "USER=root"]


def test_env_value_takes_the_last() -> None:
    assert ps.env_value(["PATH=/a", "X", "PATH=/b"], "PATH") == "/b"
    assert ps.env_value(["X=1"], "PATH") is None


def test_unprivileged_root_gets_garden_caps() -> None:
    caps = ps.capabilities(False, 0)
    assert caps["bounding"] == UNPRIVILEGED_CAPS
    assert caps["effective"] == caps["permitted"] == UNPRIVILEGED_CAPS
    assert len(UNPRIVILEGED_CAPS) == 14


def test_non_root_user_has_no_effective_caps() -> None:
    caps = ps.capabilities(False, 1000)
    assert caps["bounding"] == UNPRIVILEGED_CAPS
    assert caps["effective"] == caps["permitted"] == []


def test_privileged_container_gets_full_set() -> None:
    caps = ps.capabilities(True, 0)
    assert caps["effective"] == PRIVILEGED_CAPS
    assert "CAP_SYS_ADMIN" in caps["bounding"]


def test_privileged_container_caps_are_what_the_server_holds() -> None:
    # A host without CAP_SYS_RESOURCE: asking runc exec for it fails the exec with EPERM.
    allowed = frozenset(PRIVILEGED_CAPS) - {"CAP_SYS_RESOURCE"}
    caps = ps.capabilities(True, 0, allowed)
    assert "CAP_SYS_RESOURCE" not in caps["bounding"]
    assert set(caps["effective"]) == allowed


def test_privileged_process_in_unprivileged_container_gets_no_more_caps(rootfs: Path) -> None:
    p = ps.prepare_process(rootfs, path="/bin/sh", privileged=True, ceiling={}).process
    assert p["user"] == {"uid": 0, "gid": 0}  # privileged only picks root as the default user
    assert p["capabilities"]["bounding"] == UNPRIVILEGED_CAPS
    assert p["capabilities"]["effective"] == UNPRIVILEGED_CAPS


def test_rlimits_soft_equals_hard() -> None:
    out = ps.oci_rlimits({"nofile": 1024, "nproc": 100, "as": 1 << 30}, {"nofile": 4096})
    assert out == [
        {"type": "RLIMIT_AS", "soft": 1 << 30, "hard": 1 << 30},
        {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024},
        {"type": "RLIMIT_NPROC", "soft": 100, "hard": 100},
    ]


def test_rlimit_above_the_host_ceiling_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="at most 4096"):
        ps.oci_rlimits({"nofile": 4097}, {"nofile": 4096})


@pytest.mark.parametrize("bad", [{"nofiles": 1}, {"nofile": -1}, {"nofile": True}])
def test_bad_rlimits_are_invalid(bad: dict[str, int]) -> None:
    with pytest.raises(InvalidRequestError):
        ps.oci_rlimits(bad, {})


def test_rlimit_numbers_match_the_resource_module() -> None:
    import resource

    assert ps.RLIMITS["nofile"] == resource.RLIMIT_NOFILE
    assert ps.RLIMITS["as"] == resource.RLIMIT_AS
    assert ps.RLIMITS["stack"] == resource.RLIMIT_STACK
    assert ps.RLIMITS["rttime"] == resource.RLIMIT_RTTIME


def test_ceiling_is_our_own_hard_limit() -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    ceiling = ps.rlimit_ceiling()
    assert ceiling["nofile"] in (hard, None)


def test_build_process_with_tty() -> None:
    p = ps.build_process(
        args=["sh", "-c", "x"],
        env=["A=1"],
        cwd="/home/vcap",
        uid=1000,
        gid=1000,
        additional_gids=[2000],
        tty=True,
        console_size=(40, 132),
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": 9, "hard": 9}],
    )
    assert p["terminal"] is True
    assert p["consoleSize"] == {"height": 40, "width": 132}
    assert p["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [2000]}
    assert p["noNewPrivileges"] is True
    assert p["capabilities"]["effective"] == []
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 9, "hard": 9}]


# --- lookups in a rootfs ---------------------------------------------------------------------


def _exe(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"#!/bin/sh\n")
    path.chmod(0o755)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    _exe(root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "env").symlink_to("/bin/busybox")  # absolute: inside the root
    (root / "bin" / "plain").write_text("not executable")
    (root / "bin" / "adir").mkdir()
    _exe(root / "home" / "vcap" / "tool")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nvcap:x:1000:1000::/home/vcap:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nvcap:x:1000:\nextra:x:2000:vcap,other\n")
    # escapes: an absolute symlink and a relative one that climbs out of the root
    _exe(tmp_path / "host-only" / "secret")
    (root / "bin" / "escape").symlink_to(str(tmp_path / "host-only" / "secret"))
    (root / "bin" / "climb").symlink_to("../../../host-only/secret")
    return root


def test_path_lookup_follows_symlinks_inside(rootfs: Path) -> None:
    env = ["PATH=/nope:/usr/bin:/bin"]
    assert ps.find_executable(rootfs, "env", env) == "/usr/bin/env"
    assert ps.find_executable(rootfs, "sh", env) == "/bin/sh"
    assert ps.find_executable(rootfs, "/bin/sh", env) == "/bin/sh"


def test_default_path_when_env_has_none(rootfs: Path) -> None:
    assert ps.find_executable(rootfs, "busybox", []) == "/bin/busybox"


def test_relative_path_with_slash_is_taken_from_cwd(rootfs: Path) -> None:
    assert ps.find_executable(rootfs, "./tool", [], "/home/vcap") == "./tool"
    with pytest.raises(ExecutableNotFoundError):
        ps.find_executable(rootfs, "./tool", [], "/")


@pytest.mark.parametrize("name", ["missing", "plain", "adir", "escape", "climb", "/bin/escape"])
def test_not_found_or_not_executable_or_escaping(rootfs: Path, name: str) -> None:
    with pytest.raises(ExecutableNotFoundError):
        ps.find_executable(rootfs, name, ["PATH=/bin"])


def test_ensure_dir_creates_inside_root_only(rootfs: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (rootfs / "link").symlink_to(str(tmp_path / "outside"))  # a host path: dangles in the root
    with pytest.raises(InvalidRequestError):
        ps.ensure_dir(rootfs, "/link/a", 0, 0)
    assert list((tmp_path / "outside").iterdir()) == []
    (rootfs / "homes").symlink_to("/home")  # absolute, resolved inside the root
    ps.ensure_dir(rootfs, "/homes/app/data", os.getuid(), os.getgid())
    assert (rootfs / "home" / "app" / "data").is_dir()
    ps.ensure_dir(rootfs, "/home/vcap", 1, 1)  # existing: untouched
    with pytest.raises(InvalidRequestError):
        ps.ensure_dir(rootfs, "/bin/plain/x", 0, 0)


def test_prepare_process_defaults(rootfs: Path) -> None:
    prepared = ps.prepare_process(
        rootfs,
        path="sh",
        args=["-c", "id"],
        container_env=["PATH=/bin", "A=1"],
        env=["A=2"],
        limits={"nofile": 64},
        ceiling={"nofile": 100},
    )
    p = prepared.process
    assert prepared.executable == "/bin/sh"  # found on the merged env's PATH
    assert p["args"] == ["sh", "-c", "id"]
    assert p["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [2000]}
    assert p["cwd"] == "/home/vcap"
    assert p["env"] == ["PATH=/bin", "A=2", "HOME=/home/vcap", "USER=vcap"]
    assert p["capabilities"]["effective"] == []


def test_prepare_process_privileged_is_root_and_creates_dir(rootfs: Path) -> None:
    p = ps.prepare_process(
        rootfs,
        path="/bin/sh",
        privileged=True,
        privileged_container=True,
        dir="/srv/app",
        host_id_offset=0,
        ceiling={},
    ).process
    assert p["user"] == {"uid": 0, "gid": 0}
    assert p["cwd"] == "/srv/app"
    assert (rootfs / "srv" / "app").is_dir()
    assert "CAP_SYS_ADMIN" in p["capabilities"]["effective"]


def test_prepare_process_unknown_user_and_missing_binary(rootfs: Path) -> None:
    with pytest.raises(InvalidRequestError):
        ps.prepare_process(rootfs, path="sh", user="nobody", ceiling={})
    with pytest.raises(ExecutableNotFoundError):
        ps.prepare_process(rootfs, path="nope", user="root", ceiling={})
