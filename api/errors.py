"""Client-visible errors of the api, and the one place they become HTTP.

    ApiError                     {"error": code, "message": ...}
    ├── BadRequest               400
    ├── Unauthorized             401
    ├── NotFound                 404
    ├── MethodNotAllowed         405
    ├── RequestTimeout           408 (headers or body too slow)
    ├── Conflict                 409 (route_conflict, job_finished, ...)
    ├── PayloadTooLarge          413
    ├── Invalid                  422 (invalid_module, missing_config, ...)
    ├── HeadersTooLarge          431
    ├── InternalError            500 (a bug of ours, still JSON)
    ├── BadGateway               502 (worker crashed)
    ├── Unavailable              503 (quarantined, restarting, runtime down)
    ├── GatewayTimeout           504 (handler or worker timed out)
    └── InsufficientStorage      507 (disk full: ENOSPC, EDQUOT, SQLITE_FULL)

builder.errors.BuildError subclasses carry their own status and code;
runtime.errors.RuntimeFailure codes are mapped by RUNTIME_STATUS
(from_runtime). error_body is the one renderer: the control plane's exception
handlers, the fast path (api/dispatch.py, api/http_server.py), the auth guard
and the job event socket all answer through it.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from builder.errors import BuildError
from runtime.errors import RuntimeFailure


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.extra = extra


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Invalid(ApiError):
    status = 422
    code = "invalid"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"


class InsufficientStorage(ApiError):
    status = 507
    code = "insufficient_storage"


# errno values that mean "no space left", whoever's quota ran out.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether exc says the disk (or the quota) is full: an OSError with
    ENOSPC/EDQUOT, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


@contextmanager
def disk_full_is_507(what: str) -> Iterator[None]:
    """Turn a disk-full failure inside the block into InsufficientStorage
    (JSON 507) naming what could not be written; anything else passes through.

        with disk_full_is_507("the job"):
            await store.insert(...)
    """
    try:
        yield
    except ApiError:
        raise
    except (OSError, sqlite3.Error) as exc:
        if is_disk_full(exc):
            raise InsufficientStorage(
                f"no space left to store {what}; free disk space on the server's data dir and retry",
            ) from exc
        raise


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(ApiError):
    status = 408
    code = "request_timeout"


class HeadersTooLarge(ApiError):
    status = 431
    code = "headers_too_large"


class InternalError(ApiError):
    status = 500
    code = "internal_error"


class BadGateway(ApiError):
    status = 502
    code = "worker_crashed"


class GatewayTimeout(ApiError):
    status = 504
    code = "gateway_timeout"


# runtime.errors.RuntimeFailure codes that are not the module's fault; every
# other code (load_failed, abi_mismatch, missing_config, onload_failed, ...)
# says the module is not loadable: 422.
RUNTIME_STATUS: dict[str, type[ApiError]] = {
    # The runtime is down or cannot host a worker now: retrying may help.
    "runtime_unreachable": Unavailable,
    "runtime_failed": Unavailable,
    "agent_error": Unavailable,
    "no_uid": Unavailable,
    "no_sandbox": Unavailable,
    "too_many_connections": Unavailable,
    # The worker died between load and start (a crash, a kill): transient.
    "no_such_worker": Unavailable,
    # The worker did not answer load/start in time.
    "worker_timeout": GatewayTimeout,
    # The version is registered but its artifact is gone from the store: the
    # request is fine, the server's state stands in its way (rebuild/redeploy).
    "artifact_missing": Conflict,
    # The artifact's signed provenance does not hold (runtime/provenance.py):
    # the store's state refuses the load, not the request.
    "artifact_unsigned": Conflict,
    "artifact_tampered": Conflict,
    "untrusted_builder": Conflict,
    "bad_state": Conflict,
}


def from_runtime(exc: RuntimeFailure) -> ApiError:
    """The ApiError a runtime failure answers as; its code is kept."""
    return RUNTIME_STATUS.get(exc.code, Invalid)(exc.message, code=exc.code, **exc.extra)


_UNEXPECTED = InternalError("unexpected server error")


def error_body(exc: BaseException) -> tuple[int, bytes]:
    """Status and JSON body for any exception: the one error renderer."""
    if not isinstance(exc, (ApiError, BuildError)):
        exc = _UNEXPECTED
    return exc.status, orjson.dumps({"error": exc.code, "message": exc.message, **exc.extra})
