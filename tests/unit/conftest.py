"""Fixtures shared by the unit tests: the `real` and `fake` servers (tests/unit/servers.py)."""

from tests.unit.servers import fake, real, real_unix  # noqa: F401
