"""The one error tree of the server.

Every failure a client can see is a `GardenError`; its `kind` is the wire `type` of API.md's
error table. The HTTP status for each kind lives in `garden/http/errors.py` and nowhere else.
Kernel failures are wrapped at the `linux/` boundary as `KernelError` subclasses that say what
was tried.
"""

from __future__ import annotations

import errno


class GardenError(Exception):
    """Base of every error a client may see."""

    kind = "InternalError"

    def __init__(self, message: str, *, handle: str = "", process_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.handle = handle
        self.process_id = process_id


class InvalidRequestError(GardenError):
    kind = "InvalidRequestError"


class UnauthorizedError(GardenError):
    kind = "UnauthorizedError"


class PrivilegedContainersDisallowedError(GardenError):
    kind = "PrivilegedContainersDisallowedError"


class ContainerNotFoundError(GardenError):
    kind = "ContainerNotFoundError"

    def __init__(self, handle: str) -> None:
        super().__init__(f"unknown handle: {handle}", handle=handle)


class ProcessNotFoundError(GardenError):
    kind = "ProcessNotFoundError"


class PropertyNotFoundError(GardenError):
    kind = "PropertyNotFoundError"


class FileNotFoundInContainerError(GardenError):
    kind = "FileNotFoundError"


class ExecutableNotFoundError(GardenError):
    kind = "ExecutableNotFoundError"


class RouteNotFoundError(GardenError):
    kind = "RouteNotFoundError"


class MethodNotAllowedError(GardenError):
    kind = "MethodNotAllowedError"


class HandleInUseError(GardenError):
    kind = "HandleInUseError"

    def __init__(self, handle: str) -> None:
        super().__init__(f"handle '{handle}' already in use", handle=handle)


class ProcessIdInUseError(GardenError):
    kind = "ProcessIdInUseError"


class ContainerStoppedError(GardenError):
    kind = "ContainerStoppedError"


class ConflictError(GardenError):
    """A request that conflicts with the current state (e.g. a limit below current use)."""

    kind = "ConflictError"


class AddressInUseError(GardenError):
    kind = "AddressInUseError"


class SubnetOverlapError(GardenError):
    kind = "SubnetOverlapError"


class PayloadTooLargeError(GardenError):
    kind = "PayloadTooLargeError"


class DiskLimitExceededError(GardenError):
    kind = "DiskLimitExceededError"


class CapacityExhaustedError(GardenError):
    kind = "CapacityExhaustedError"


class InsufficientStorageError(GardenError):
    """The server's own disk (the state dir: event log, bundles, process logs) is full, as
    opposed to a container's disk limit (`DiskLimitExceededError`)."""

    kind = "InsufficientStorageError"


class ServiceUnavailableError(GardenError):
    """The server is shutting down or the container's actor is gone."""

    kind = "ServiceUnavailableError"


class InternalError(GardenError):
    kind = "InternalError"


class KernelError(InternalError):
    """An operation on a kernel resource failed; `what` says which step on which object."""

    def __init__(self, what: str, cause: BaseException | str, *, handle: str = "") -> None:
        super().__init__(f"{what}: {cause}", handle=handle)
        self.what = what
        # Kept apart from __cause__, which `raise ... from None` on the way up may clear:
        # `exhaustion_of` tells an ENOSPC or EMFILE behind it from other failures.
        self.errno: int | None = cause.errno if isinstance(cause, OSError) else None


class CgroupError(KernelError):
    pass


class MountError(KernelError):
    pass


class RuntimeFailedError(KernelError):
    """The OCI runtime binary (runc/crun) failed; the message carries its stderr."""


_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


def _errno_behind(exc: BaseException) -> int | None:
    """The errno of the first `OSError` in `exc`'s chain of causes (and contexts)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno
        if isinstance(current, KernelError) and current.errno is not None:
            return current.errno
        current = current.__cause__ or current.__context__
    return None


def exhaustion_of(exc: BaseException) -> GardenError | None:
    """The error to answer when `exc` is, at heart, the server running out of something that
    comes back (its disk, its file descriptors), instead of a bare `InternalError`; else None.
    A `GardenError` that is not an `InternalError` already says what happened: kept."""
    if isinstance(exc, GardenError) and not isinstance(exc, InternalError):
        return None
    code = _errno_behind(exc)
    message = exc.message if isinstance(exc, GardenError) else f"{type(exc).__name__}: {exc}"
    handle = exc.handle if isinstance(exc, GardenError) else ""
    if code in _STORAGE_ERRNOS:
        return InsufficientStorageError(f"the server's disk is full: {message}", handle=handle)
    if code in _DESCRIPTOR_ERRNOS:
        return ServiceUnavailableError(
            f"the server is out of file descriptors: {message}", handle=handle
        )
    return None


# --- raised only by the client (garden.client): failures that have no wire `type` ---


class ServerUnreachableError(GardenError):
    """The client could not connect to the server, or the connection broke mid-request."""

    kind = "ServerUnreachableError"


class UnexpectedResponseError(GardenError):
    """The server's answer is not what API.md says (not JSON, an unknown error type, a process
    stream that ended without an exit status). `status` is the HTTP status (0 when none)."""

    kind = "UnexpectedResponseError"

    def __init__(self, message: str, *, status: int = 0, handle: str = "") -> None:
        super().__init__(message, handle=handle)
        self.status = status


class LogCorruptError(Exception):
    """The event log is damaged before its last record; the server refuses to start."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"event log {path} is corrupt at byte {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class ImageNotFoundError(GardenError):
    """A rootfs image that is not where its URI says, or has no such tag."""

    kind = "ImageNotFoundError"


class RegistryError(GardenError):
    """An image registry could not be reached, timed out, or answered with an error other
    than "not found" (its own error is in the message). Answered 502."""

    kind = "RegistryError"


class InvalidImageError(InvalidRequestError):
    """An image that cannot be used: unreadable manifest, a digest that does not match, a
    layer member escaping its layer."""

    kind = "InvalidImageError"
