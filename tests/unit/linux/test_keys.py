"""The key quota is raised to fit --max-containers, and never lowered."""

from __future__ import annotations

from pathlib import Path

from garden.linux.keys import ensure_key_quota


def test_raises_but_never_lowers(tmp_path: Path) -> None:
    (tmp_path / "maxkeys").write_text("200\n")
    (tmp_path / "maxbytes").write_text("9999999\n")
    ensure_key_quota(1024, root=tmp_path)
    assert (tmp_path / "maxkeys").read_text() == "1224"
    assert (tmp_path / "maxbytes").read_text() == "9999999\n"


def test_missing_files_are_tolerated(tmp_path: Path) -> None:
    ensure_key_quota(10, root=tmp_path / "absent")
