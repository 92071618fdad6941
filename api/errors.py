"""Client-visible errors of the api, and the one place they become HTTP.

    ApiError                     {"error": code, "message": ...}
    ├── NotFound                 404
    ├── Conflict                 409 (route_conflict, job_finished, ...)
    ├── BadRequest               400
    ├── Invalid                  422 (invalid_module, missing_config, ...)
    ├── PayloadTooLarge          413
    ├── Unauthorized             401
    ├── Unavailable              503 (quarantined, restarting)
    └── Upstream                 502/504 (worker crashed or timed out)

builder.errors.BuildError subclasses carry their own status and code and are
mapped by the same table.
"""

from __future__ import annotations

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
