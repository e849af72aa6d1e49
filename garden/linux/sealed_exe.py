"""A sealed in-memory copy of the OCI runtime binary, made once per server process and run
instead of the file on disk.

runc and crun defend the host's binary against a container process that would overwrite it
through `/proc/<runtime pid>/exe` (CVE-2019-5736): at every call they first re-execute
themselves from a copy the container cannot write. crun 1.8 bind-mounts itself read-only under
/tmp (two mounts and an unmount in the host's mount table) and re-execs; runc 1.1 copies its
10 MB into a memfd and re-execs. Both skip that step when they already run from a memfd sealed
against writing, growing and shrinking (their `is_self_cloned` check), which is what this
module makes: the same protection, paid once at start instead of at every create, exec, state
and delete.

The copy lives as long as the process that made it (an fd kept open here, one per distinct
binary; `/proc/<our pid>/fd/<n>` is the path to run). conmon runs the runtime through that path
only while it starts a process, which the server waits for. A runtime upgraded on disk is
picked up at the next server start.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_MFD_EXEC = 0x0010  # Linux 6.3+: say that the memfd is meant to be executed
_copies: dict[tuple[int, ...], str] = {}


def sealed_copy(binary: str) -> str:
    """The path of a sealed memfd holding the bytes of `binary` (made on first use, then
    reused while the file on disk is unchanged)."""
    st = os.stat(binary)
    key = (os.getpid(), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    path = _copies.get(key)
    if path is None:
        path = _copies[key] = _make(binary, st.st_size)
    return path


def _make(binary: str, size: int) -> str:
    name = f"garden-{Path(binary).name}"
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        fd = os.memfd_create(name, flags | _MFD_EXEC)
    except OSError:  # a kernel before 6.3 does not know MFD_EXEC
        fd = os.memfd_create(name, flags)
    try:
        src = os.open(binary, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sent = 0
            while sent < size:
                n = os.sendfile(fd, src, sent, size - sent)
                if n == 0:
                    raise OSError(f"{binary} shrank while it was copied")
                sent += n
        finally:
            os.close(src)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return f"/proc/{os.getpid()}/fd/{fd}"


def is_sealed(path: str) -> bool:
    """True if `path` is a memfd with every seal `sealed_copy` sets."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS == _SEALS
    except OSError:
        return False
    finally:
        os.close(fd)
