"""Regression: a destroy answered 500 when another process detached a loop device while
`backed_under` read its sysfs entry (ENODEV); such a device is skipped now."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from garden.linux import loop


def test_loop_device_detached_while_listed_is_skipped_not_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys_block = tmp_path / "block"
    for name, backing in (("loop0", "/elsewhere/img"), ("loop1", "gone"), ("loop2", "")):
        (sys_block / name / "loop").mkdir(parents=True)
        (sys_block / name / "loop" / "backing_file").write_text(backing + "\n")
    images = tmp_path / "images"
    images.mkdir()
    (sys_block / "loop2" / "loop" / "backing_file").write_text(f"{images}/c1/disk.img\n")
    monkeypatch.setattr(loop, "_SYS_BLOCK", sys_block)
    real_read = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self.parent.parent.name == "loop1":
            raise OSError(errno.ENODEV, "No such device")
        return real_read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    assert loop.backed_under(images) == {"/dev/loop2": f"{images}/c1/disk.img"}
