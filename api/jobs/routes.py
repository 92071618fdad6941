"""/jobs: the control plane of durable jobs (c-web-modules' wire shapes)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from api.errors import BadRequest, Invalid
from api.jobs.service import JobService, public_event, public_job

router = APIRouter()


def _service(request: Request | WebSocket) -> JobService:
    return request.app.state.cweb.jobs


def _number(body: dict, key: str, kind: type, default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise Invalid(f"{key} must be {'an integer' if kind is int else 'a number'}", code="invalid_job")
    return kind(value)


@router.post("/jobs")
async def submit_job(request: Request) -> dict:
    """Create a job: {"module", "job", "payload": {...}} -> {"job_uuid", "state", "module_hash"}."""
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object", code="invalid_job")
    module, job = body.get("module"), body.get("job")
    if not isinstance(module, str) or not isinstance(job, str):
        raise Invalid("fields 'module' and 'job' are required strings", code="invalid_job")
    payload = body.get("payload", {})
    created, is_new = await _service(request).submit(
        module,
        job,
        payload,
        max_attempts=_number(body, "max_attempts", int, 1),
        timeout_s=_number(body, "timeout_s", float, 600.0),
        priority=_number(body, "priority", int, 0),
        delay_s=_number(body, "delay_s", float, 0.0),
        run_after=_number(body, "run_after", float, None),
        idempotency_key=request.headers.get("idempotency-key"),
    )
    return {"job_uuid": created["job_uuid"], "state": created["state"], "module_hash": created["module_hash"], "created": is_new}


@router.get("/jobs")
async def list_jobs(
    request: Request,
    state: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    cursor: int | None = None,
    module: str | None = None,
) -> dict:
    """Jobs, newest first; pass next_cursor back as cursor for the next page."""
    jobs, next_cursor = await _service(request).list(state, limit, cursor, module)
    return {
        "jobs": [
            {k: public_job(j)[k] for k in ("job_uuid", "state", "module", "job", "module_hash", "created_at", "updated_at", "attempts")}
            for j in jobs
        ],
        "next_cursor": next_cursor,
    }


@router.get("/jobs/{job_uuid}")
async def get_job(request: Request, job_uuid: str) -> dict:
    return public_job(await _service(request).get(job_uuid))


@router.post("/jobs/{job_uuid}/cancel")
async def cancel_job(request: Request, job_uuid: str) -> dict:
    return await _service(request).cancel(job_uuid)


@router.get("/jobs/{job_uuid}/events")
async def job_events(request: Request, job_uuid: str, since_event_id: int = 0, follow: int = 0) -> Any:
    """Stored events after since_event_id; with follow=1 a newline-delimited stream until the terminal event."""
    service = _service(request)
    if not follow:
        await service.get(job_uuid)
        return {"events": [public_event(e) for e in await service.events_since(job_uuid, since_event_id)]}
    stream = service.stream(job_uuid, since_event_id)
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
    """WS /jobs/ws?id=UUID&since_event_id=N: replay stored events after N, then live ones."""
    job_uuid = websocket.query_params.get("id", "")
    try:
        since = int(websocket.query_params.get("since_event_id", "0"))
    except ValueError:
        since = -1
    await websocket.accept()
    if since < 0:
        await websocket.send_text(json.dumps({"error": "invalid_since_event_id", "message": "since_event_id must be a non-negative integer"}))
        await websocket.close(code=1008)
        return
    service = _service(websocket)
    try:
        async for ev in service.stream(job_uuid, since):
            await websocket.send_text(orjson.dumps(public_event(ev)).decode())
    except WebSocketDisconnect:
        return
    except Exception as exc:  # noqa: BLE001 - NotFound and friends become a JSON message and a policy close
        await websocket.send_text(json.dumps({"error": getattr(exc, "code", "error"), "message": getattr(exc, "message", str(exc))}))
        await websocket.close(code=1008)
        return
    await websocket.close(code=1000)
