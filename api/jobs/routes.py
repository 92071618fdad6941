"""/jobs: the control plane of durable jobs (c-web-modules' wire shapes).

POST /jobs is the hot endpoint (every submission), so it is served by a bare
ASGI handler, `submit_asgi`, that reads the body, parses it with orjson and
answers without FastAPI's request/response machinery. It is mounted in this
router ahead of the documented FastAPI route of the same path (which stays
for OpenAPI and gives the same answers), and can also be called directly by
the outermost dispatcher to skip FastAPI's middleware as well.

Query parameters are parsed here rather than by FastAPI so that bad values
get the same JSON errors (`{"error", "message"}`) as everything else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.routing import Route

from api.errors import ApiError, BadRequest, Invalid, PayloadTooLarge, error_body
from api.jobs.service import DEFAULT_TIMEOUT_S, INT64_MAX, MAX_PAYLOAD_BYTES, PAGE_BYTES, JobService, public_event, public_job

router = APIRouter()
log = logging.getLogger("cweb.jobs")

# A submission body is the payload plus a few small fields.
MAX_SUBMIT_BODY = MAX_PAYLOAD_BYTES + 64 * 1024
LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 1000
EVENTS_DEFAULT_LIMIT = 1000
EVENTS_MAX_LIMIT = 1000
LIST_FIELDS = ("job_uuid", "state", "module", "job", "module_hash", "created_at", "updated_at", "attempts")
_JSON_HEADERS = [(b"content-type", b"application/json")]


def _service(request: Request | WebSocket) -> JobService:
    return request.app.state.cweb.jobs


def _number(body: dict, key: str, kind: type, default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise Invalid(f"{key} must be {'an integer' if kind is int else 'a number'}", code="invalid_job")
    return kind(value)


def _int_param(params: Any, key: str, default: int | None, code: str, minimum: int = 0, maximum: int = INT64_MAX) -> int | None:
    """A non-negative integer query parameter that fits SQLite's INTEGER: anything else is a 400."""
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if len(raw) <= 40 else None
    except ValueError:
        value = None
    if value is None:
        raise BadRequest(f"{key} must be an integer, not {raw[:40]!r}", code=code) from None
    if value < minimum:
        raise BadRequest(f"{key} must be at least {minimum}", code=code)
    if value > maximum:
        raise BadRequest(f"{key} must be at most {maximum}", code=code)
    return value


async def submit_body(service: JobService, raw: bytes, idempotency_key: str | None) -> dict:
    """Create a job from a POST /jobs body; the answer's JSON object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object", code="invalid_job")
    module, job = body.get("module"), body.get("job")
    if not isinstance(job, str) or not (module is None or isinstance(module, str)):
        raise Invalid("field 'job' is a required string, 'module' an optional one", code="invalid_job")
    if module is None:
        # As c-web-modules: the job name alone, when one active module has it.
        module = service.module_for(job)
    created, is_new = await service.submit(
        module,
        job,
        body.get("payload", {}),
        max_attempts=_number(body, "max_attempts", int, 1),
        timeout_s=_number(body, "timeout_s", float, DEFAULT_TIMEOUT_S),
        priority=_number(body, "priority", int, 0),
        delay_s=_number(body, "delay_s", float, 0.0),
        run_after=_number(body, "run_after", float, None),
        idempotency_key=idempotency_key,
    )
    return {"job_uuid": created["job_uuid"], "state": created["state"], "module_hash": created["module_hash"], "created": is_new}


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away before sending the whole body", code="incomplete_body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"a job submission is limited to {limit} bytes", code="payload_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def submit_asgi(service: JobService, scope: dict, receive: Any, send: Any) -> None:
    """POST /jobs as a bare ASGI handler."""
    key = None
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            key = value.decode("latin-1")
            break
    try:
        answer = await submit_body(service, await _read_body(receive, MAX_SUBMIT_BODY), key)
        status, payload = 200, orjson.dumps(answer)
    except ApiError as exc:
        status, payload = error_body(exc)
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class _SubmitEndpoint:
    """The ASGI app behind POST /jobs inside the FastAPI router."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await submit_asgi(scope["app"].state.cweb.jobs, scope, receive, send)


# Matched before the documented route below: same path and method, same answers.
router.routes.append(Route("/jobs", endpoint=_SubmitEndpoint(), methods=["POST"], include_in_schema=False))


@router.post("/jobs")
async def submit_job(request: Request) -> dict:
    """Create a job: {"module", "job", "payload": {...}} -> {"job_uuid", "state", "module_hash"}.

    Optional fields: max_attempts (default 1), timeout_s (default 600),
    priority (higher first), delay_s or run_after (epoch seconds). An
    Idempotency-Key header returns the job first created with that key."""
    return await submit_body(_service(request), await request.body(), request.headers.get("idempotency-key"))


@router.get("/jobs")
async def list_jobs(request: Request) -> dict:
    """Jobs, newest first: ?state=&module=&limit= (1..1000, default 100); pass next_cursor back as cursor."""
    params = request.query_params
    limit = _int_param(params, "limit", LIST_DEFAULT_LIMIT, "invalid_limit", 1, LIST_MAX_LIMIT)
    cursor = _int_param(params, "cursor", None, "invalid_cursor")
    assert limit is not None
    jobs, next_cursor = await _service(request).list(params.get("state") or None, limit, cursor, params.get("module") or None)
    return {"jobs": [{k: public_job(j)[k] for k in LIST_FIELDS} for j in jobs], "next_cursor": next_cursor}


@router.get("/jobs/{job_uuid}")
async def get_job(request: Request, job_uuid: str) -> dict:
    """A job's state, module_hash, result (the JSON object it set) or error."""
    return public_job(await _service(request).get(job_uuid))


@router.post("/jobs/{job_uuid}/cancel")
async def cancel_job(request: Request, job_uuid: str) -> dict:
    """Cancel a pending or running job -> {"job_uuid", "state"}; 409 once it has finished."""
    return await _service(request).cancel(job_uuid)


@router.get("/jobs/{job_uuid}/events")
async def job_events(request: Request, job_uuid: str) -> Any:
    """Stored events after since_event_id, at most `limit` (1..1000, default 1000) per page:
    while next_since_event_id is not null, pass it back as since_event_id.
    With follow=1 a newline-delimited stream until the terminal event."""
    service = _service(request)
    since = _int_param(request.query_params, "since_event_id", 0, "invalid_since_event_id")
    limit = _int_param(request.query_params, "limit", EVENTS_DEFAULT_LIMIT, "invalid_limit", 1, EVENTS_MAX_LIMIT)
    follow = request.query_params.get("follow", "0") not in ("", "0", "false")
    assert since is not None and limit is not None
    if not follow:
        await service.get(job_uuid)
        page = await service.events_since(job_uuid, since, limit + 1)
        # More may follow when the page is full by count or cut by size (an
        # exactly full last page then leads to one empty page).
        more = len(page) > limit or sum(len(e["data"]) for e in page) >= PAGE_BYTES
        page = page[:limit]
        return {"events": [public_event(e) for e in page], "next_since_event_id": page[-1]["event_id"] if more else None}
    stream = service.stream(job_uuid, since)
    first = await anext(stream, None)  # raises NotFound before the response starts

    async def lines():
        if first is None:
            return
        yield orjson.dumps(public_event(first)) + b"\n"
        async for ev in stream:
            yield orjson.dumps(public_event(ev)) + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.websocket("/jobs/ws")
async def job_socket(websocket: WebSocket) -> None:
    """WS /jobs/ws?id=UUID&since_event_id=N: replay stored events after N, then live ones.

    The socket stays open after the terminal event, as c-web-modules' does,
    until the client closes it; `close_on_end=1` has the server close it
    (1000) right after the terminal event."""
    job_uuid = websocket.query_params.get("id", "")
    close_on_end = websocket.query_params.get("close_on_end", "0") not in ("", "0", "false")
    await websocket.accept()
    try:
        since = _int_param(websocket.query_params, "since_event_id", 0, "invalid_since_event_id")
        assert since is not None
        stream = _service(websocket).stream(job_uuid, since)
        first = await anext(stream, None)  # NotFound surfaces here
    except ApiError as exc:  # unknown job, bad parameters: a JSON message and a policy close
        await websocket.send_text(error_body(exc)[1].decode())
        await websocket.close(code=1008)
        return

    async def pump() -> None:
        if first is None:
            return
        await websocket.send_text(orjson.dumps(public_event(first)).decode())
        async for ev in stream:
            await websocket.send_text(orjson.dumps(public_event(ev)).decode())

    async def until_client_leaves() -> None:
        # Messages from the client mean nothing here; its going away ends the stream.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    sending = asyncio.create_task(pump())
    listening = asyncio.create_task(until_client_leaves())
    try:
        await asyncio.wait({sending, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not close_on_end and sending.done() and sending.exception() is None:
            await listening  # every event sent: the client decides when to leave
    finally:
        client_left = listening.done() and not listening.cancelled()
        listening.cancel()
        if not sending.done():
            sending.cancel()  # the client left: stop following the job
        await asyncio.gather(sending, listening, return_exceptions=True)
        await stream.aclose()
    if sending.cancelled() or client_left:
        return
    exc = sending.exception()
    if exc is None:
        await websocket.close(code=1000)
    elif not isinstance(exc, (WebSocketDisconnect, OSError)):
        log.error("job socket for %s failed", job_uuid, exc_info=exc)
