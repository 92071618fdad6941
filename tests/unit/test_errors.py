"""The api's error tree: every runtime code's HTTP answer, and the one renderer."""

from __future__ import annotations

import orjson
import pytest

from api import errors
from builder.errors import CompileFailed
from runtime.errors import RuntimeFailure


@pytest.mark.parametrize(("code", "status"), [
    ("runtime_unreachable", 503),
    ("runtime_failed", 503),
    ("agent_error", 503),
    ("no_uid", 503),
    ("no_sandbox", 503),
    ("too_many_connections", 503),
    ("no_such_worker", 503),
    ("worker_timeout", 504),
    ("artifact_missing", 409),
    ("bad_state", 409),
    # The module's own fault: not loadable.
    ("load_failed", 422),
    ("load_crashed", 422),
    ("abi_mismatch", 422),
    ("missing_config", 422),
    ("onload_failed", 422),
    ("artifact_corrupt", 422),
    ("some_module_code", 422),
])
def test_runtime_codes_map_to_status_and_keep_their_code(code: str, status: int) -> None:
    exc = errors.from_runtime(RuntimeFailure(code, f"{code} happened"))
    got_status, body = errors.error_body(exc)
    assert got_status == status
    assert orjson.loads(body) == {"error": code, "message": f"{code} happened"}


@pytest.mark.parametrize(("exc", "status", "code"), [
    (errors.BadRequest("x"), 400, "bad_request"),
    (errors.Unauthorized("x"), 401, "unauthorized"),
    (errors.NotFound("x"), 404, "not_found"),
    (errors.MethodNotAllowed("x"), 405, "method_not_allowed"),
    (errors.RequestTimeout("x", code="header_timeout"), 408, "header_timeout"),
    (errors.Conflict("x", code="route_conflict"), 409, "route_conflict"),
    (errors.PayloadTooLarge("x", code="body_too_large"), 413, "body_too_large"),
    (errors.Invalid("x", code="invalid_module"), 422, "invalid_module"),
    (errors.HeadersTooLarge("x"), 431, "headers_too_large"),
    (errors.InternalError("x"), 500, "internal_error"),
    (errors.BadGateway("x"), 502, "worker_crashed"),
    (errors.Unavailable("x", code="quarantined"), 503, "quarantined"),
    (errors.GatewayTimeout("x", code="handler_timeout"), 504, "handler_timeout"),
    (errors.InsufficientStorage("x"), 507, "insufficient_storage"),
    (CompileFailed("x"), 422, "compile_failed"),
])
def test_error_body_renders_every_class_the_same_way(exc: Exception, status: int, code: str) -> None:
    assert errors.error_body(exc) == (status, orjson.dumps({"error": code, "message": "x"}))


def test_error_body_keeps_extra_fields_after_code_and_message() -> None:
    exc = errors.MethodNotAllowed("POST is not allowed on /a", allowed=["GET"])
    status, body = errors.error_body(exc)
    assert status == 405
    assert orjson.loads(body) == {"error": "method_not_allowed", "message": "POST is not allowed on /a", "allowed": ["GET"]}


def test_unexpected_exceptions_render_as_json_500_without_their_text() -> None:
    status, body = errors.error_body(KeyError("secret detail"))
    assert status == 500
    assert orjson.loads(body) == {"error": "internal_error", "message": "unexpected server error"}
