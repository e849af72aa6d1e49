"""runtime: which runtime fits a cgroup layout, and the runtime's own state listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from garden.errors import RuntimeFailedError
from garden.linux.runtime import Runtime, crun_refuses_host, probe_runtime


def test_crun_refuses_hybrid_with_controllers(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    reason = crun_refuses_host(tmp_path)
    assert reason is not None and "hugetlb" in reason


def test_crun_accepts_hybrid_without_controllers_pure_v1_and_v2(tmp_path: Path) -> None:
    hybrid = tmp_path / "hybrid"
    (hybrid / "unified").mkdir(parents=True)
    (hybrid / "unified" / "cgroup.controllers").write_text("\n")
    assert crun_refuses_host(hybrid) is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    assert crun_refuses_host(v1) is None
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    assert crun_refuses_host(v2) is None


async def test_probe_explicit_crun_on_hybrid_fails_clearly(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    (cg / "unified").mkdir(parents=True)
    (cg / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    with pytest.raises(RuntimeFailedError, match="crun"):
        await probe_runtime("crun", root=tmp_path / "r", cgroup_root=cg)


async def test_probe_auto_falls_back_to_runc(tmp_path: Path) -> None:
    import shutil

    if shutil.which("runc") is None:
        pytest.skip("runc not installed")
    cg = tmp_path / "cg"
    (cg / "unified").mkdir(parents=True)
    (cg / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    rt = await probe_runtime("auto", root=tmp_path / "r", cgroup_root=cg)
    assert rt.name == "runc" and rt.root == tmp_path / "r" and rt.root.is_dir()


async def test_probe_auto_prefers_crun_where_it_works(tmp_path: Path) -> None:
    import shutil

    if shutil.which("crun") is None:
        pytest.skip("crun not installed")
    cg = tmp_path / "cg"
    (cg / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
    (cg / "cgroup.controllers").write_text("cpu memory\n")
    rt = await probe_runtime("auto", root=tmp_path / "r", cgroup_root=cg)
    assert rt.name == "crun"


async def test_probe_auto_keeps_the_runtime_of_live_containers(tmp_path: Path) -> None:
    """Regression: "auto" picked runc when a fleet was made, crun after a restart (the host
    changed), and every live container was then found stopped."""
    import shutil

    if shutil.which("crun") is None or shutil.which("runc") is None:
        pytest.skip("needs both runc and crun installed")
    refusing, willing = tmp_path / "cg1", tmp_path / "cg2"
    (refusing / "unified").mkdir(parents=True)
    (refusing / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    willing.mkdir()
    (willing / "cgroup.controllers").write_text("cpu memory\n")
    root = tmp_path / "r"
    assert (await probe_runtime("auto", root=root, cgroup_root=refusing)).name == "runc"
    # No containers yet: the next start may choose again.
    assert (await probe_runtime("auto", root=root, cgroup_root=willing)).name == "crun"
    assert (await probe_runtime("auto", root=root, cgroup_root=refusing)).name == "runc"
    (root / "0123abcd").mkdir()  # a container runc made
    assert (await probe_runtime("auto", root=root, cgroup_root=willing)).name == "runc"


def test_container_ids_and_knows(tmp_path: Path) -> None:
    rt = Runtime("/usr/bin/false", tmp_path / "root")
    assert rt.container_ids() == []
    (tmp_path / "root" / "b").mkdir(parents=True)
    (tmp_path / "root" / "a").mkdir()
    assert rt.container_ids() == ["a", "b"]
    assert rt.knows("a") and not rt.knows("c")


async def test_state_of_unknown_container_is_none(tmp_path: Path) -> None:
    rt = Runtime("/usr/bin/false", tmp_path / "root")
    assert await rt.state("nope") is None
    await rt.delete("nope")  # unknown counts as done


async def test_failure_carries_stderr(tmp_path: Path) -> None:
    rt = Runtime("/bin/sh", tmp_path / "root")  # "sh --root X start id" fails with a message
    with pytest.raises(RuntimeFailedError) as info:
        await rt.start("c1")
    assert "sh start c1" in info.value.message


async def test_auto_keeps_the_runtime_that_made_the_containers_still_there(tmp_path: Path) -> None:
    import shutil

    if shutil.which("crun") is None or shutil.which("runc") is None:
        pytest.skip("needs both crun and runc installed")
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "cgroup.controllers").write_text("cpu memory\n")  # pure v2: crun would be picked
    root = tmp_path / "r"
    root.mkdir()
    (root / "somecontainer").mkdir()
    (root / ".garden-runtime").write_text("runc\n")
    assert (await probe_runtime("auto", root=root, cgroup_root=cg)).name == "runc"
    with pytest.raises(RuntimeFailedError, match="made by runc"):
        await probe_runtime("crun", root=root, cgroup_root=cg)
    (root / "somecontainer").rmdir()  # none left: auto is free to choose again
    assert (await probe_runtime("auto", root=root, cgroup_root=cg)).name == "crun"
    assert (root / ".garden-runtime").read_text() == "crun\n"


async def test_probe_runs_a_sealed_copy_of_the_runtime(tmp_path: Path) -> None:
    """The runtime skips its own per-call re-exec (CVE-2019-5736 defence) only when it runs
    from a sealed memfd: the probe hands out such a copy of the file it found."""
    from garden.linux.sealed_exe import is_sealed

    rt = await probe_runtime("runc", root=tmp_path / "r")
    assert rt.exe != rt.binary and is_sealed(rt.exe)
    assert Path(rt.exe).read_bytes() == Path(rt.binary).read_bytes()
    assert rt._cmd("state", "x")[0] == rt.exe


async def test_probe_falls_back_to_the_file_when_no_copy_can_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from garden.linux import runtime

    def refuse(binary: str) -> str:
        raise PermissionError(1, "memfd_create refused")

    monkeypatch.setattr(runtime, "sealed_copy", refuse)
    rt = await probe_runtime("runc", root=tmp_path / "r")
    assert rt.exe == rt.binary
