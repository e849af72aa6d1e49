"""Privileged containers, and what differs from the default: root in them is the host's root
(every capability the server holds, no user namespace, no seccomp filter), while pid, mount,
uts and network namespaces and the masks stay. test_isolation_disallow.py has the server that
refuses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from garden.linux.proc import capability_bounding_mask
from tests.integration.conftest import Server
from tests.integration.isolation.helpers import (
    create,
    install_probe,
    probe,
    probe_results,
    run,
    sh,
    status_fields,
)

pytestmark = pytest.mark.root
__all__ = ["probe"]  # a fixture


async def test_privileged_is_root_on_the_host(server: Server, probe: Path) -> None:
    await create(server, "priv", privileged=True)
    server_caps = f"{capability_bounding_mask():016x}"
    root = status_fields((await run(server, "priv", "cat", "/proc/self/status")).text)
    assert (root["CapEff"], root["CapPrm"], root["CapBnd"]) == (server_caps,) * 3
    assert root["Seccomp"] == "0"
    assert root["NoNewPrivs"] == "1"
    ran = await run(server, "priv", "cat", "/proc/self/uid_map")
    assert ran.text.split() == ["0", "0", "4294967295"]  # the host's own ids
    vcap = status_fields((await run(server, "priv", "cat", "/proc/self/status", user="vcap")).text)
    assert (vcap["CapEff"], vcap["CapBnd"]) == ("0000000000000000", server_caps)
    await install_probe(server, "priv", probe)
    got = await probe_results(server, "priv", "keyctl", "clone3", "getpid")
    assert got["keyctl"].endswith(" OK")  # no filter: the host keyring is reachable
    assert got["clone3"] != "-1 ENOSYS"
    # still its own pid, uts and network namespaces, and the masks
    assert (await run(server, "priv", "hostname")).text == "priv\n"
    assert (await sh(server, "priv", "ls /sys/class/net")).text.split() == ["eth0", "lo"]
    assert (await run(server, "priv", "cat", "/proc/keys")).stdout == b""


async def test_privileged_process_in_privileged_container_gets_every_cap(server: Server) -> None:
    # A regression: runc exec was asked for caps the server lacks (CAP_SYS_RESOURCE on these
    # machines) and failed with a 500.
    await create(server, "pp", privileged=True)
    ran = await run(server, "pp", "cat", "/proc/self/status", privileged=True, user=None)
    assert ran.exit_status == 0
    assert status_fields(ran.text)["CapEff"] == f"{capability_bounding_mask():016x}"
