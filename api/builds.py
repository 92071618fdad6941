"""The build farm seen from the control plane (builder/farm.py does the work).

    GET /builds?state=queued|running|done|failed   newest first
    GET /builds/{id}                               state, queue position, builder, times
    GET /builds/{id}/log                           Server-Sent Events: state, log, end

All three need the API key when one is set (api/auth.py): logs quote the
source. A deploy's answer names its build (`build.id`), and `cweb deploy`
follows its log.

With PostgreSQL (api/builds_pg.py) they also answer for the builds of the
other nodes, from the `builds` table: every build then names its `node`.
Live log streaming stays local to the node that runs the build.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.auth import presented_keys
from api.builds_pg import PgBuilds
from api.errors import NotFound
from builder.farm import STATES, Build

router = APIRouter()
log = logging.getLogger("cweb.builds")

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


def _shared(request: Request) -> PgBuilds | None:
    return request.app.state.cweb.build_rows


def _not_found(build_id: str) -> NotFound:
    return NotFound(f"no build {build_id[:32]!r} (the last {LIST_LIMIT} are kept)", code="build_not_found")


def _local(request: Request, b: Build, position: int | None) -> dict:
    out = b.summary(position)
    if _shared(request) is not None:
        out["node"] = request.app.state.cweb.settings.node_id
    return out


async def _elsewhere(request: Request, build_id: str) -> tuple[dict, list[str]] | None:
    """Another node's build from the table, if there is a table."""
    shared = _shared(request)
    if shared is None:
        return None
    try:
        return await shared.find(build_id)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("cannot read build %s from the database: %s", build_id[:32], exc)
        return None


@router.get("/builds", tags=["builds"])
async def list_builds(request: Request, state: str | None = Query(None, pattern="^(" + "|".join(STATES) + ")$"),
                      limit: int = Query(100, ge=1, le=LIST_LIMIT)) -> dict:
    """The farm's builds, newest first, with the queue and the builders."""
    farm = _farm(request)
    builds = [_local(request, b, farm.position(b)) for b in farm.listing(state)[:limit]]
    out: dict[str, Any] = {"builds": builds, "queue_depth": len(farm.queue), "builders": farm.builders}
    shared = _shared(request)
    if shared is not None:
        try:
            builds += await shared.others(state, limit)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # This node's builds still answer; the others' come back with the database.
            log.warning("cannot list the other nodes' builds: %s", exc)
            out["partial"] = True
        builds.sort(key=lambda s: s["queued_at"], reverse=True)
        del builds[limit:]
    return out


@router.get("/builds/{build_id}", tags=["builds"])
async def get_build(request: Request, build_id: str) -> dict:
    """One build: state, queue position (0 = next), builder, queue and compile time."""
    farm = _farm(request)
    b = farm.get(build_id)
    if b is not None:
        return _local(request, b, farm.position(b))
    found = await _elsewhere(request, build_id)
    if found is None:
        raise _not_found(build_id)
    return found[0]


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
    b = farm.get(build_id)
    if b is None:
        found = await _elsewhere(request, build_id)
        if found is None:
            raise _not_found(build_id)
        return _stored_log(*found)
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


def _stored_log(summary: dict, lines: list[str]) -> StreamingResponse:
    """Another node's build: its state and the log lines stored when it last
    changed; `end` if it finished, else `elsewhere` naming the node whose
    GET /builds/{id}/log streams it live."""
    events = [{"event": "state", **summary}] + [{"event": "log", "text": t} for t in lines]
    if summary["state"] in ("done", "failed"):
        events.append({"event": "end", **summary})
    else:
        events.append({"event": "elsewhere", "node": summary["node"], "state": summary["state"],
                       "message": f"build {summary['id']} runs on node {summary['node']}: follow its log there"})
    body = b"".join(_sse(e) for e in events)
    return StreamingResponse(iter([body]), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})
