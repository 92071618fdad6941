"""Seeing into a running server: metrics, module logs, build history,
worker health and the status page.

    GET /metrics                     Prometheus text (api/metrics.py)
    GET /modules/{name}/logs         what the module printed; ?tail=N, ?follow=1 (NDJSON)
    GET /_cweb/builds                the last builds with diagnostics
    GET /_cweb/workers               worker processes with module, hash, state
    GET /_cweb/history               crashes, restarts and quarantines, per module
    GET /_cweb/events                what changes, as Server-Sent Events (the status page's live feed)
    GET /ui  (and / when no module serves it)   the status page (static/ui.html)
    GET /redoc                       ReDoc, with fastapi-offline's bundle minus its CDN logo

The pages are served with a Content-Security-Policy that lets them load
from this server only, in case a bundled asset reaches for a CDN again.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from api.logs import MODULE_LOGGER, module_fields

router = APIRouter()
log = logging.getLogger("cweb.api")
module_log = logging.getLogger(MODULE_LOGGER)

UI_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "ui.html")
BUILD_HISTORY = 50
# Lines a follower may fall behind by before the newest are dropped for it.
FOLLOW_QUEUE = 10_000
# Where FastAPIOffline (api/app.py) serves the Swagger UI and ReDoc assets.
DOCS_STATIC = "/docs/static"
# The one external URL in fastapi-offline's redoc.standalone.js (the "API docs by
# Redocly" logo, fetched on every page view) and what replaces it.
REDOC_CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
BLANK_IMAGE = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"
# Pages may load from this server only (WebSockets to it included).
PAGE_CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; "
    "frame-ancestors 'self'; base-uri 'self'; form-action 'self'"
)
# An idle follow stream sends an empty line this often (keeps proxies and the client's read alive).
FOLLOW_KEEPALIVE_S = 15.0
# Changes a /_cweb/events follower may fall behind by; past it, it is told to resync.
CHANGES_QUEUE = 1000
# How often request totals are compared and, when they moved, sent to followers.
STATS_INTERVAL_S = 1.0
# Job events that change what the jobs table shows (progress and custom events do not).
JOB_STATE_EVENTS = frozenset({"created", "started", "retry", "done", "failed", "canceled"})


class Changes:
    """Fans out what changed (module versions, crashes, builds, job states,
    per-module request totals) to followers of GET /_cweb/events, so the
    status page fetches only what an event says moved instead of polling
    every table."""

    def __init__(self) -> None:
        self.followers: set[asyncio.Queue] = set()
        self.wanted = asyncio.Event()  # set while anyone follows: the stats ticker runs only then

    def publish(self, kind: str, data: Any) -> None:
        for q in self.followers:
            if q.qsize() < CHANGES_QUEUE:
                q.put_nowait((kind, data))
            elif q.qsize() == CHANGES_QUEUE:
                q.put_nowait(("resync", {}))  # one past the bound: this follower reloads everything

    def follow(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.followers.add(q)
        self.wanted.set()
        return q

    def unfollow(self, q: asyncio.Queue) -> None:
        self.followers.discard(q)
        if not self.followers:
            self.wanted.clear()

    async def follow_jobs(self, jobs: Any) -> None:
        """Job state changes from every job's event stream (not its progress)."""
        q = jobs.subscribe("*")
        try:
            while True:
                ev = await q.get()
                if ev["type"] in JOB_STATE_EVENTS and self.followers:
                    self.publish("job", {"job_uuid": ev["job_uuid"], "type": ev["type"]})
        finally:
            jobs.unsubscribe("*", q)

    async def tick_stats(self, metrics: Any) -> None:
        """Per-module request totals, sent when they moved (once a second at most)."""
        last: dict = {}
        while True:
            await self.wanted.wait()
            now = module_totals(metrics)
            if now != last:
                self.publish("stats", {"ts": time.time(), "modules": now})
                last = now
            await asyncio.sleep(STATS_INTERVAL_S)


def module_totals(metrics: Any) -> dict[str, dict[str, float]]:
    """module -> requests, errors (5xx: crashes, timeouts, the module's own), seconds (summed latency)."""
    out: dict[str, dict[str, float]] = {}
    stats = metrics.request_stats
    for (module, _route, status), n in list(stats.counts.items()):
        t = out.setdefault(module, {"requests": 0, "errors": 0, "seconds": 0.0})
        t["requests"] += n
        if status >= 500:
            t["errors"] += n
    for (module, _route), hist in list(stats.hists.items()):
        t = out.setdefault(module, {"requests": 0, "errors": 0, "seconds": 0.0})
        t["seconds"] = round(t["seconds"] + hist[-1], 6)
    return out


class LogHub:
    """Fans module output (relayed by the agent) out to followers, by module name."""

    def __init__(self) -> None:
        self.followers: dict[str, set[asyncio.Queue]] = {}
        self.names: dict[str, str] = {}  # module_hash -> name
        self.active: dict[str, str] = {}  # name -> the hash activated last (request lines carry it)
        # Set by create_app: whose observe_request is tapped for request
        # lines while anyone follows a module's log (never otherwise).
        self.metrics: Any = None
        self._untapped: Any = None

    def _tap(self) -> None:
        """Request lines (method, route, status, time) for followers: the
        request counter is wrapped while a follower exists, so the module
        fast path pays nothing when nobody follows."""
        if self.metrics is None or self._untapped is not None:
            return
        inner = self._untapped = self.metrics.observe_request
        followers, active = self.followers, self.active

        def observe(module: str, route: str, status: int, seconds: float, method: str = "") -> None:
            inner(module, route, status, seconds, method)
            subs = followers.get(module)
            if subs:
                entry = {"ts": time.time(), "stream": "request", "module_hash": active.get(module, ""),
                         "line": f"{method or '-'} {route} {status} {seconds * 1000:.1f} ms"}
                for q in subs:
                    if q.qsize() < FOLLOW_QUEUE:
                        q.put_nowait(entry)

        self.metrics.observe_request = observe

    def _untap(self) -> None:
        if self._untapped is not None and not self.followers:
            self.metrics.observe_request = self._untapped
            self._untapped = None

    def publish(self, entry: dict) -> None:
        module_hash = entry.get("module_hash", "")
        name = self.names.get(module_hash)
        if module_log.isEnabledFor(logging.DEBUG):
            module_log.debug("%s", entry.get("line", ""), extra=module_fields(name, module_hash, stream=entry.get("stream")))
        if name is None:
            return
        for q in self.followers.get(name, ()):
            if q.qsize() < FOLLOW_QUEUE:
                q.put_nowait(entry)

    def activated(self, version: Any) -> None:
        """ModuleHost.on_activate: remember the name of the hash, and say so in the server log."""
        self.names[version.module_hash] = version.name
        self.active[version.name] = version.module_hash
        log.info("module %s active: %s", version.name, version.module_hash,
                 extra=module_fields(version.name, version.module_hash, routes=len(version.decl.get("routes", ()))))

    def follow(self, name: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.followers.setdefault(name, set()).add(q)
        self._tap()
        return q

    def unfollow(self, name: str, q: asyncio.Queue) -> None:
        subs = self.followers.get(name)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self.followers[name]
        self._untap()


class BuildHistory:
    def __init__(self, on_record: Callable[[str, Any], None] | None = None) -> None:
        self.entries: collections.deque = collections.deque(maxlen=BUILD_HISTORY)
        # Told of every build (api/observe.py Changes).
        self.on_record = on_record

    def record(self, **entry: Any) -> None:
        entry.setdefault("at", time.time())
        entry.setdefault("diagnostics", [])
        self.entries.appendleft(entry)
        if self.on_record is not None:
            self.on_record("build", {"file": entry.get("file"), "outcome": entry.get("outcome")})
        outcome = entry.get("outcome")
        # "build rejected x.c: route_conflict: ...": compiled, then refused by the deploy.
        detail = f": {entry.get('error')}: {entry.get('message')}" if outcome == "rejected" else (
            f": {entry.get('message')}" if entry.get("message") else "")
        log.log(logging.WARNING if outcome in ("failed", "rejected") else logging.INFO, "build %s %s%s%s", outcome, entry.get("file"),
                " (check)" if entry.get("check") else "", detail,
                extra=module_fields(None, entry.get("module_hash"), file=entry.get("file"), outcome=outcome,
                                    build_ms=entry.get("build_ms"), error=entry.get("error")))


def _state(request: Request) -> Any:
    return request.app.state.cweb


@router.get("/metrics", tags=["observability"])
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of requests, sockets, jobs, builds and workers."""
    st = _state(request)
    body = await st.metrics.render(st.host, st.jobs, st.settings.store_dir, st.settings.data_dir)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def _key(entry: dict) -> tuple:
    return entry.get("ts"), entry.get("module_hash"), entry.get("stream"), entry.get("line")


@router.get("/modules/{name}/logs", tags=["modules"])
async def module_logs(request: Request, name: str, tail: int = Query(200, ge=0, le=10_000), follow: int = Query(0, ge=0, le=1)) -> Any:
    """What the module printed (stdout/stderr), per version, with timestamps.

    With follow=1 the answer is a newline-delimited JSON stream: the tail, then new lines."""
    st = _state(request)
    hashes = [v["module_hash"] for v in await st.registry.versions(name)]
    if not hashes:
        st.host.get(name)  # raises the 404
    for h in hashes:
        st.logs.names.setdefault(h, name)
    # Subscribe before reading the tail so no line falls between the two.
    q = st.logs.follow(name) if follow else None
    try:
        reply = await st.agent.call("logs", hashes=hashes, tail=tail)
    except BaseException:
        if q is not None:
            st.logs.unfollow(name, q)
        raise
    lines = reply["lines"]
    if q is None:
        return {"name": name, "lines": lines}
    seen = {_key(e) for e in lines}

    async def stream():
        try:
            for entry in lines:
                yield orjson.dumps(entry) + b"\n"
            while True:
                try:
                    entry = await asyncio.wait_for(q.get(), FOLLOW_KEEPALIVE_S)
                except TimeoutError:
                    yield b"\n"  # keep-alive; also notices a gone client
                    continue
                if seen:
                    if _key(entry) in seen:
                        continue
                    seen.clear()  # past the tail: no more duplicates possible
                yield orjson.dumps({k: v for k, v in entry.items() if k != "event"}) + b"\n"
        finally:
            st.logs.unfollow(name, q)

    return StreamingResponse(stream(), media_type="application/x-ndjson", headers={"cache-control": "no-store"})


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
    return {"sandbox": reply.get("sandbox"), "workers": out}


@router.get("/_cweb/history", tags=["observability"])
async def history(request: Request, module: str | None = Query(None, max_length=128)) -> dict:
    """Crashes (with the signal), restarts and quarantines, newest first; ?module= narrows to one module."""
    entries = [e for e in reversed(_state(request).host.history) if module is None or e["module"] == module]
    return {"history": entries}


def _sse(kind: str, data: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.get("/_cweb/events", tags=["observability"])
async def events(request: Request) -> StreamingResponse:
    """What changes, as Server-Sent Events: `hello` (request totals now), then
    `module` (activated, rollback, removed, crashed, restarted, quarantined),
    `build`, `job` (state changes), `stats` (per-module request totals when
    they moved, at most once a second) and `resync` (fell behind: reload)."""
    st = _state(request)
    q = st.changes.follow()

    async def stream():
        try:
            yield _sse("hello", {"ts": time.time(), "modules": module_totals(st.metrics)})
            while True:
                try:
                    kind, data = await asyncio.wait_for(q.get(), FOLLOW_KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield _sse(kind, data)
        finally:
            st.changes.unfollow(q)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


@router.get("/ui", include_in_schema=False)
async def ui() -> HTMLResponse:
    with open(UI_PAGE, encoding="utf-8") as f:
        return HTMLResponse(f.read(), headers={"cache-control": "no-store", "content-security-policy": PAGE_CSP})


@functools.cache
def _redoc_bundle() -> bytes:
    import fastapi_offline

    path = os.path.join(os.path.dirname(os.path.abspath(fastapi_offline.__file__)), "static", "redoc.standalone.js")
    with open(path, encoding="utf-8") as f:
        return f.read().replace(REDOC_CDN_LOGO, BLANK_IMAGE).encode("utf-8")


@router.get("/redoc/redoc.standalone.js", include_in_schema=False)
async def redoc_bundle() -> Response:
    return Response(_redoc_bundle(), media_type="text/javascript; charset=utf-8", headers={"cache-control": "public, max-age=3600"})


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc, for an app created with redoc_url=None (FastAPIOffline's own page
    loads the bundle that fetches the CDN logo, and has no CSP)."""
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
        with_google_fonts=False,
    )
    page.headers["content-security-policy"] = PAGE_CSP
    return page


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    # Only reached when no module serves "/" (the fast path tries modules first).
    return RedirectResponse("/ui")
