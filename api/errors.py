"""Client-visible errors of the api, and the one place they become HTTP.

    ApiError                     {"error": code, "message": ...}
    ├── NotFound                 404
    ├── Conflict                 409 (route_conflict, job_finished, ...)
    ├── BadRequest               400
    ├── Invalid                  422 (invalid_module, missing_config, ...)
    ├── PayloadTooLarge          413
    ├── Unauthorized             401
    ├── Unavailable              503 (quarantined, restarting)
    ├── InsufficientStorage      507 (disk full: ENOSPC, EDQUOT, SQLITE_FULL)
    └── Upstream                 502/504 (worker crashed or timed out)

builder.errors.BuildError subclasses carry their own status and code and are
mapped by the same table.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from builder.errors import BuildError


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


class Upstream(ApiError):
    status = 502
    code = "worker_failed"


def error_body(exc: Exception) -> tuple[int, bytes]:
    """Status and JSON body for any exception the control plane lets escape."""
    if isinstance(exc, (ApiError, BuildError)):
        body = {"error": exc.code, "message": exc.message, **exc.extra}
        return exc.status, orjson.dumps(body)
    return 500, orjson.dumps({"error": "internal_error", "message": "unexpected server error"})


def json_error(status: int, code: str, message: str, **extra: object) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": code, "message": message, **extra})
