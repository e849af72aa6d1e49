"""The one place that maps errors to HTTP statuses (API.md's error table)."""

from __future__ import annotations

from garden import errors as e
from garden.api import ErrorBody

STATUS: dict[type[e.GardenError], int] = {
    e.InvalidRequestError: 400,
    e.UnauthorizedError: 401,
    e.PrivilegedContainersDisallowedError: 403,
    e.ContainerNotFoundError: 404,
    e.ProcessNotFoundError: 404,
    e.PropertyNotFoundError: 404,
    e.FileNotFoundInContainerError: 404,
    e.ExecutableNotFoundError: 404,
    e.ImageNotFoundError: 404,
    e.RouteNotFoundError: 404,
    e.MethodNotAllowedError: 405,
    e.HandleInUseError: 409,
    e.ProcessIdInUseError: 409,
    e.ContainerStoppedError: 409,
    e.ConflictError: 409,
    e.AddressInUseError: 409,
    e.SubnetOverlapError: 409,
    e.PayloadTooLargeError: 413,
    e.DiskLimitExceededError: 507,
    e.InsufficientStorageError: 507,
    e.CapacityExhaustedError: 503,
    e.RegistryError: 502,
    e.ServiceUnavailableError: 503,
    e.InternalError: 500,
}


def status_of(error: e.GardenError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def classify(error: e.GardenError) -> e.GardenError:
    """An `InternalError` caused by the server running out of disk or descriptors becomes
    `InsufficientStorageError` (507) or `ServiceUnavailableError` (503): the client may retry
    once the operator freed some. Anything else is answered as it is."""
    return e.exhaustion_of(error) or error


def body_of(error: e.GardenError) -> ErrorBody:
    return ErrorBody(
        type=error.kind, message=error.message, handle=error.handle, process_id=error.process_id
    )
