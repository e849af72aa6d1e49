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


async def test_leaving_the_block_deletes_what_is_queued(tmp_path: Path) -> None:
    async with open_trash(tmp_path / "trash") as trash:
        for name in ("a", "b", "c"):
            await trash.discard(_tree(tmp_path / "containers" / name))
    assert list((tmp_path / "trash").iterdir()) == []


async def test_a_cancelled_block_deletes_what_is_queued_without_waiting_out_the_bound(
    tmp_path: Path,
) -> None:
    """Regression: when the server's nursery is cancelled, the deleting task is cancelled
    too; the drain must not wait its whole bound for a task that is gone."""
    started = trio.current_time()
    with trio.CancelScope() as scope:
        async with open_trash(tmp_path / "trash") as trash:
            for name in ("a", "b"):
                await trash.discard(_tree(tmp_path / "containers" / name))
            scope.cancel()
            await trio.sleep_forever()
    assert list((tmp_path / "trash").iterdir()) == []
    assert trio.current_time() - started < 2.0
