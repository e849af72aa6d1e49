"""Regression: libnftables waits with select(), which aborts the whole process once its socket
gets a descriptor >= FD_SETSIZE (1024) — as at a restart with 1,000 live containers, each
holding a pidfd and an OOM eventfd. `Nft.run` must then use the `nft` binary instead."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.conftest import needs_root, new_tag

pytestmark = pytest.mark.root

SCRIPT = """
import os, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1200)]
assert held[-1] >= 1024
from garden.linux.net.nft import Nft
table = "{table}"
Nft().run(f"add table ip {{table}}; delete table ip {{table}}", "a batch")
print("done")
"""


def test_nft_with_descriptors_above_fd_setsize_does_not_abort() -> None:
    needs_root()
    script = SCRIPT.format(table=new_tag())  # a batch (a transaction) of a table of its own
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
