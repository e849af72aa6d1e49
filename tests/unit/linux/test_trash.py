"""trash: a discarded directory leaves its place at once and is deleted in the background;
what an earlier run left in the trash is deleted after the start."""

from __future__ import annotations

from pathlib import Path

import trio

from garden.linux.trash import open_trash


def _tree(path: Path) -> Path:
    (path / "upper" / "etc").mkdir(parents=True)
    (path / "upper" / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (path / "config.json").write_text("{}")
    return path


async def _until_empty(directory: Path) -> None:
    # The deletion runs in a worker thread: nothing to await but its effect on the disk.
    with trio.fail_after(10):
        while any(directory.iterdir()):
            await trio.sleep(0.01)


async def test_discard_moves_at_once_and_deletes_later(tmp_path: Path) -> None:
    bundle = _tree(tmp_path / "containers" / "abc")
    async with open_trash(tmp_path / "trash") as trash:
        await trash.discard(bundle)
        assert not bundle.exists()
        assert (tmp_path / "containers").exists()
        await _until_empty(tmp_path / "trash")
        await trash.discard(tmp_path / "containers" / "missing")  # absent: done


async def test_leftovers_of_an_earlier_run_are_deleted(tmp_path: Path) -> None:
    _tree(tmp_path / "trash" / "old.1234")
    async with open_trash(tmp_path / "trash"):
        await _until_empty(tmp_path / "trash")
