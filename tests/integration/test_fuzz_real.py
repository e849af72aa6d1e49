"""A short schemathesis run against a real server on the real kernel (runc, cgroups, overlay,
networking): the operations that reach the kernel, with half the cases aimed at a container
that exists. No 500, errors in API.md's shape, and the `server` fixture then destroys every
container and asserts nothing leaked. Fixed budget, derandomized (`GARDEN_FUZZ_REAL_EXAMPLES`
and `GARDEN_FUZZ_RANDOM=1` for longer, fresh runs by hand)."""

from __future__ import annotations

import os
from typing import Any

import hypothesis.strategies as st
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, given, settings

from garden import openapi
from tests.integration.conftest import Server

EXAMPLES = int(os.environ.get("GARDEN_FUZZ_REAL_EXAMPLES", "60"))
KNOWN = "fzreal"
ERROR_KEYS = {"type", "message", "handle", "process_id"}
# Operations that reach the kernel; the rest are covered on fakes (tests/unit/test_fuzz_api.py).
KERNEL_PATHS = (
    r"^/containers$|/processes$|/files$|/net/(in|out)$|/limits/|/properties/|/stop$|/grace_time$"
)

schema = schemathesis.openapi.from_dict(openapi.build()).include(path_regex=KERNEL_PATHS)


@schema.hook
def flatmap_path_parameters(context: Any, parameters: dict[str, Any]) -> Any:
    if "handle" not in (parameters or {}):
        return st.just(parameters)
    return st.sampled_from([parameters, {**parameters, "handle": KNOWN}])


def _fuzz(url: str) -> None:
    statuses: dict[int, int] = {}

    @given(case=schema.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        derandomize=not os.environ.get("GARDEN_FUZZ_RANDOM"),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        kwargs = case.as_transport_kwargs(base_url=url)
        kwargs.pop("timeout", None)
        streaming = case.path.endswith("/processes")
        with requests.request(**kwargs, stream=True, timeout=60) as response:
            status = response.status_code
            statuses[status] = statuses.get(status, 0) + 1
            assert status != 500, (case.method, case.formatted_path, case.body, response.text)
            if status >= 400:
                assert set(response.json()) == ERROR_KEYS
            elif not streaming:
                response.content  # noqa: B018

    run()
    print("statuses", dict(sorted(statuses.items())))


async def test_fuzz_against_the_real_kernel(server: Server) -> None:
    r = await server.client.post("/containers", json={"handle": KNOWN})
    assert r.status_code == 200, r.text
    await trio.to_thread.run_sync(_fuzz, server.url)
    assert (await server.client.get("/ping")).status_code == 200
