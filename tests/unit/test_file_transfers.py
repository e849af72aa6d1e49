"""File transfers and the container's life, on the fake kernel with trio's autojump clock:
a transfer keeps its container from being reaped, a destroy cancels transfers and waits for
them, and no transfer starts while a destroy runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from garden.actors.files import STOP_TRANSFERS_TIMEOUT, Transfers
from garden.errors import ContainerNotFoundError
from tests.unit.fake_files import FakeFiles
from tests.unit.fakes import FakeKernel
from tests.unit.test_supervisor import ORIGIN, make_config, running, spec


async def paused_body(release: trio.Event) -> AsyncIterator[bytes]:
    yield b"first"
    await release.wait()
    yield b"last"


async def test_a_transfer_holds_off_the_grace_reaper(
    tmp_path: Path, autojump_clock: object
) -> None:
    files = FakeFiles()
    async with running(make_config(tmp_path), FakeKernel(), files=files) as (sup, _):
        await sup.create(spec(handle="g", grace_time=5), ORIGIN)
        release = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: sup.files.stream_in(
                    "g", path="/f", user="", tar=False, body=paused_body(release)
                )
            )
            await files.first_chunk_read.wait()
            await trio.sleep(60)  # twelve grace times of virtual time
            assert sup.handles({}) == ["g"]
            release.set()
        assert files.written["/f"] == b"firstlast"
        await trio.sleep(6)  # the clock restarted when the transfer ended
        assert sup.handles({}) == []


async def test_destroy_cancels_waits_and_refuses(tmp_path: Path, autojump_clock: object) -> None:
    files = FakeFiles()
    async with running(make_config(tmp_path), FakeKernel(), files=files) as (sup, _):
        await sup.create(spec(handle="d"), ORIGIN)
        release = trio.Event()
        errors: list[BaseException] = []

        async def upload() -> None:
            try:
                await sup.files.stream_in(
                    "d", path="/f", user="", tar=False, body=paused_body(release)
                )
            except ContainerNotFoundError as e:
                errors.append(e)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            await files.first_chunk_read.wait()
            await sup.destroy("d", ORIGIN)
        assert isinstance(files.ended, trio.Cancelled)
        assert len(errors) == 1 and "destroyed during the transfer" in errors[0].args[0]
        with pytest.raises(ContainerNotFoundError):
            await sup.files.open_out("d", path="/f", user="")


async def test_transfers_refused_while_closed_and_a_stuck_one_is_given_up(
    autojump_clock: object,
) -> None:
    transfers = Transfers()
    entered = trio.Event()

    async def stubborn() -> None:
        with transfers.running("h"):
            entered.set()
            with trio.CancelScope(shield=True):  # a thread stuck in a syscall, say
                await trio.sleep(1000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stubborn)
        await entered.wait()
        start = trio.current_time()
        async with transfers.closed("h"):
            assert trio.current_time() - start == pytest.approx(STOP_TRANSFERS_TIMEOUT)
            with pytest.raises(ContainerNotFoundError), transfers.running("h"):
                pass
        with transfers.running("h"):  # open again once the destroy is over
            pass
        nursery.cancel_scope.cancel()
