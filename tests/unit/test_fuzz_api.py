"""Fuzzing the API with schemathesis from our own OpenAPI document (`garden/openapi.py`) against
a real server on 127.0.0.1 over the fake kernel: no 500, no crash, every error in API.md's
shape, and no partial state (the kernel holds exactly the containers the event log says exist,
and the log replays to the state the server had).

The budget is fixed and the run deterministic (`derandomize`): FUZZ_EXAMPLES cases per
operation; `GARDEN_FUZZ_EXAMPLES` raises it for a longer run by hand, and `GARDEN_FUZZ_RANDOM=1`
draws new cases each run instead of the same ones.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, settings

from garden import openapi
from garden.config import ServerConfig
from garden.events.log import EventLog
from garden.events.snapshot import SNAPSHOT_FILE, restore
from garden.main import serve
from tests.unit.fakes import FakeKernel, FakeNetworker, FakeProcesses

FUZZ_EXAMPLES = int(os.environ.get("GARDEN_FUZZ_EXAMPLES", "6"))
KNOWN_HANDLE = "fz"
ERROR_KEYS = {"type", "message", "handle", "process_id"}
# Answers that stream until something happens (a process exit, a new record): not read whole.
STREAMING = ("/processes", "/events")

schema = schemathesis.openapi.from_dict(openapi.build())


class Server:
    """The garden server in a thread of its own (schemathesis calls block)."""

    def __init__(self, tmp: Path) -> None:
        rootfs = tmp / "rootfs"
        rootfs.mkdir(exist_ok=True)
        (tmp / "beside").mkdir(exist_ok=True)
        self.config = ServerConfig(
            state_dir=str(tmp / "state"),
            default_rootfs=str(rootfs),
            bind_port=0,
            tag="gfuzz",
            handle_signals=False,
            max_containers=64,
        )
        self.kernel = FakeKernel()
        self.url = ""
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._ready: queue.Queue[str | BaseException] = queue.Queue()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        try:
            with trio.CancelScope() as self._cancel:
                async with trio.open_nursery() as nursery:
                    binds = await nursery.start(
                        lambda task_status: serve(
                            self.config,
                            kernel=self.kernel,
                            processes=FakeProcesses(),
                            networker=FakeNetworker(),
                            task_status=task_status,
                        )
                    )
                    self._ready.put(binds[0])
        except BaseException as exc:
            self._ready.put(exc)
            raise

    def start(self) -> None:
        self._thread.start()
        got = self._ready.get(timeout=30)
        if isinstance(got, BaseException):
            raise got
        self.url = got

    def stop(self) -> None:
        assert self._token is not None and self._cancel is not None
        trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("fuzz"))
    srv.start()
    r = requests.post(f"{srv.url}/containers", json={"handle": KNOWN_HANDLE}, timeout=10)
    assert r.status_code == 200, r.text
    yield srv
    srv.stop()
    check_no_partial_state(srv)


def check_no_partial_state(srv: Server) -> None:
    """After the run: the log replays (whole, and from the snapshot written at the stop) to
    one state, and the fake kernel holds exactly the containers of that state."""
    state_dir = srv.config.state_path
    whole = EventLog.open(state_dir / "events.log")
    try:
        from garden.events.state import ServerState, evolve

        replayed = ServerState()
        for record in whole.records():
            evolve(replayed, record)
    finally:
        whole.close()
    restored = restore(state_dir / "events.log", state_dir / SNAPSHOT_FILE)
    restored.log.close()
    assert msgspec.to_builtins(restored.state.containers) == msgspec.to_builtins(
        replayed.containers
    )
    live = {c.container_id for c in replayed.containers.values() if c.phase != "destroying"}
    assert set(srv.kernel.live) == live


@schema.hook
def flatmap_path_parameters(context: Any, parameters: dict[str, Any]) -> Any:
    """Half the cases name a container that exists, so routes get past their 404."""
    if "handle" not in (parameters or {}):
        return st.just(parameters)
    return st.sampled_from([parameters, {**parameters, "handle": KNOWN_HANDLE}])


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=not os.environ.get("GARDEN_FUZZ_RANDOM"),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_fuzz(case: schemathesis.Case, server: Server) -> None:
    kwargs = case.as_transport_kwargs(base_url=server.url)
    kwargs.pop("timeout", None)
    with requests.request(**kwargs, stream=True, timeout=30) as response:
        status = response.status_code
        assert status != 500, (case.method, case.formatted_path, response.text)
        if status >= 400:
            body = response.json()
            assert set(body) == ERROR_KEYS, body
        elif not any(part in case.path for part in STREAMING):
            response.content  # noqa: B018 (a whole answer arrives)
