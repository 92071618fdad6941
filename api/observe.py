"""Seeing into a running server: metrics, module logs, build history,
worker health and the status page."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

router = APIRouter()

UI_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "ui.html")
BUILD_HISTORY = 50


class LogHub:
    """Fans module output (relayed by the agent) out to followers, by module name."""

    def __init__(self) -> None:
        self.followers: dict[str, set[asyncio.Queue]] = {}
        self.names: dict[str, str] = {}  # module_hash -> name

    def publish(self, entry: dict) -> None:
        name = self.names.get(entry.get("module_hash", ""))
        if name is None:
            return
        for q in self.followers.get(name, ()):
            if q.qsize() < 10_000:
                q.put_nowait(entry)

    def follow(self, name: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.followers.setdefault(name, set()).add(q)
        return q

    def unfollow(self, name: str, q: asyncio.Queue) -> None:
        subs = self.followers.get(name)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self.followers[name]


class BuildHistory:
    def __init__(self) -> None:
        self.entries: collections.deque = collections.deque(maxlen=BUILD_HISTORY)

    def record(self, **entry: Any) -> None:
        entry.setdefault("at", time.time())
        self.entries.appendleft(entry)


def _state(request: Request) -> Any:
    return request.app.state.cweb


@router.get("/metrics", include_in_schema=True, tags=["observability"])
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of requests, sockets, jobs, builds and workers."""
    st = _state(request)
    body = await st.metrics.render(st.host, st.jobs)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/modules/{name}/logs", tags=["modules"])
async def module_logs(request: Request, name: str, tail: int = Query(200, ge=0, le=10_000), follow: int = 0) -> Any:
    """What the module printed (stdout/stderr), per version, with timestamps.

    With follow=1 the answer is a newline-delimited JSON stream of new lines."""
    st = _state(request)
    hashes = [v["module_hash"] for v in st.registry.versions(name)]
    if not hashes:
        st.host.get(name)  # raises the 404
    for h in hashes:
        st.logs.names[h] = name
    reply = await st.agent.call("logs", hashes=hashes, tail=tail)
    lines = reply["lines"]
    if not follow:
        return {"name": name, "lines": lines}
    q = st.logs.follow(name)

    async def stream():
        try:
            for entry in lines:
                yield orjson.dumps(entry) + b"\n"
            while True:
                try:
                    entry = await asyncio.wait_for(q.get(), 15)
                except asyncio.TimeoutError:
                    yield b"\n"  # keep-alive; also notices a gone client
                    continue
                yield orjson.dumps(entry) + b"\n"
        finally:
            st.logs.unfollow(name, q)

    return StreamingResponse(stream(), media_type="application/x-ndjson")


@router.get("/_cweb/builds", tags=["observability"])
async def builds(request: Request) -> dict:
    """The last builds with their outcome and diagnostics."""
    return {"builds": list(_state(request).builds.entries)}


@router.get("/_cweb/workers", tags=["observability"])
async def workers(request: Request) -> dict:
    """Worker processes as the runtime agent sees them, with module and state."""
    st = _state(request)
    reply = await st.agent.call("ping")
    by_worker = st.host.by_worker
    out = []
    for w in reply["workers"]:
        v = by_worker.get(w["worker_id"])
        out.append({**w, "module": v.name if v else None, "version_state": v.state if v else None,
                    "restarts": len(v.crashes) if v else 0})
    return {"workers": out}


@router.get("/ui", include_in_schema=False)
async def ui() -> HTMLResponse:
    with open(UI_PAGE, encoding="utf-8") as f:
        return HTMLResponse(f.read())
