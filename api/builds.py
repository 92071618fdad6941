"""The build farm seen from the control plane (builder/farm.py does the work).

    GET /builds?state=queued|running|done|failed   newest first
    GET /builds/{id}                               state, queue position, builder, times
    GET /builds/{id}/log                           Server-Sent Events: state, log, end

All three need the API key when one is set (api/auth.py): logs quote the
source. A deploy's answer names its build (`build.id`), and `cweb deploy`
follows its log.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.auth import presented_keys
from api.errors import NotFound
from builder.farm import STATES, Build

router = APIRouter()

# Seconds between SSE comments while nothing happens (notices a gone client).
KEEPALIVE_S = 10.0
# Builds listed at most.
LIST_LIMIT = 500


def client_of(request: Request) -> str:
    """Whom a build is queued for (fairness): the API key it came with (as a
    digest: keys are never kept), else the peer address. Without configured
    keys a header proves nothing, so only the address counts then."""
    keys = presented_keys(request.scope.get("headers") or []) if request.app.state.cweb.settings.api_keys else []
    if keys:
        return "key:" + hashlib.sha256(keys[0]).hexdigest()[:12]
    client = request.client
    return "addr:" + (client.host if client else "unknown")


def _farm(request: Request) -> Any:
    return request.app.state.cweb.farm


def _build(request: Request, build_id: str) -> Build:
    b = _farm(request).get(build_id)
    if b is None:
        raise NotFound(f"no build {build_id[:32]!r} (the last {LIST_LIMIT} are kept)", code="build_not_found")
    return b


@router.get("/builds", tags=["builds"])
async def list_builds(request: Request, state: str | None = Query(None, pattern="^(" + "|".join(STATES) + ")$"),
                      limit: int = Query(100, ge=1, le=LIST_LIMIT)) -> dict:
    """The farm's builds, newest first, with the queue and the builders."""
    farm = _farm(request)
    found = farm.listing(state)[:limit]
    return {
        "builds": [b.summary(farm.position(b)) for b in found],
        "queue_depth": len(farm.queue),
        "builders": farm.builders,
    }


@router.get("/builds/{build_id}", tags=["builds"])
async def get_build(request: Request, build_id: str) -> dict:
    """One build: state, queue position (0 = next), builder, queue and compile time."""
    farm = _farm(request)
    b = _build(request, build_id)
    return b.summary(farm.position(b))


def _sse(event: dict) -> bytes:
    kind = event.get("event", "message")
    data = {k: v for k, v in event.items() if k != "event"}
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


@router.get("/builds/{build_id}/log", tags=["builds"])
async def build_log(request: Request, build_id: str) -> StreamingResponse:
    """The compiler's output as Server-Sent Events while the build runs:
    `state` (queued with its position, running on a builder), `log` (text),
    then one `end` with the outcome. A finished build replays its log and ends."""
    farm = _farm(request)
    b = _build(request, build_id)
    q = farm.watch(b)
    # Everything so far, then what comes: watch and snapshot with no await
    # between them, so no event is lost or sent twice.
    replay = [{"event": "state", **b.summary(farm.position(b))}]
    replay += [{"event": "log", "text": t} for t in list(b.log)]
    finished = b.finished

    async def stream() -> AsyncIterator[bytes]:
        try:
            for event in replay:
                yield _sse(event)
            if finished:
                yield _sse({"event": "end", **b.summary()})
                return
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield _sse(event)
                if event["event"] == "end":
                    return
        finally:
            farm.unwatch(b, q)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})
