"""The random-kill soak, short: a dozen SIGKILLs at random crash points and random times under
a mixed workload, every invariant checked after each restart and nothing leaked at the end
(`tests/soak/soak.py`; run the long one with `python -m tests.soak.soak --cycles 1000`)."""

from __future__ import annotations

import secrets
import shutil

import pytest

from tests.integration.conftest import TEST_ROOT, needs_root
from tests.soak.soak import soak

pytestmark = [pytest.mark.root, pytest.mark.slow]

CYCLES = 12  # about 60-100 s here


def test_soak_random_kills_lose_nothing_and_leak_nothing() -> None:
    needs_root()
    TEST_ROOT.mkdir(mode=0o711, exist_ok=True)
    base = TEST_ROOT / f"soak-{secrets.token_hex(3)}"
    base.mkdir(mode=0o711)
    try:
        done = soak(base / "state", CYCLES, seed=secrets.randbits(32))
        assert len(done) == CYCLES
    finally:
        shutil.rmtree(base, ignore_errors=True)
