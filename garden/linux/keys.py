"""The kernel's per-uid key quota: the runtime gives every container a session keyring, charged
to the host uid its root maps to, and every unprivileged container maps root to the same uid
(`--uid-base`). The default quota (200 keys, 20000 bytes) would cap a server at about 194
unprivileged containers, so the server raises it at start to what `--max-containers` needs."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("garden.linux.keys")

KEYS = Path("/proc/sys/kernel/keys")
# A session keyring costs one key and about 100 bytes of quota; leave room for the uid's other
# keys.
BYTES_PER_KEY = 100
SPARE_KEYS = 200


def ensure_key_quota(containers: int, root: Path = KEYS) -> None:
    """Raise maxkeys/maxbytes (never lower them) so `containers` keyrings fit."""
    want = {
        "maxkeys": containers + SPARE_KEYS,
        "maxbytes": (containers + SPARE_KEYS) * BYTES_PER_KEY,
    }
    for name, value in want.items():
        path = root / name
        try:
            current = int(path.read_text())
        except (OSError, ValueError):
            log.warning("key-quota-unknown file=%s", path)
            continue
        if current < value:
            try:
                path.write_text(str(value))
            except OSError as exc:
                log.warning("key-quota-not-raised file=%s want=%d error=%s", path, value, exc)
                continue
            log.info("key-quota-raised file=%s from=%d to=%d", path, current, value)
