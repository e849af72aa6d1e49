"""garden-trio: a Garden API container server."""

__version__ = "0.1.0"
