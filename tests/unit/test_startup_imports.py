"""What a server start imports: libraries only some requests need stay out of it (each costs
every start, and so every restart after a crash, its import time)."""

from __future__ import annotations

import subprocess
import sys


def test_server_start_does_not_import_the_registry_client_library() -> None:
    code = "import sys, garden.main; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "httpx (~0.1 s) is imported at start again"
