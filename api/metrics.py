"""Prometheus metrics (prometheus-client), one registry per server."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from api.deploy import ModuleHost
    from api.jobs.service import JobService

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cweb_requests_total", "Module route requests", ["module", "route", "status"], registry=r)
        self.latency = Histogram("cweb_request_seconds", "Module route latency", ["module", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ws_connections = Gauge("cweb_ws_connections", "Open module WebSocket connections", ["module"], registry=r)
        self.ws_messages = Gauge("cweb_ws_messages_total", "WebSocket messages since start", ["direction"], registry=r)
        self.jobs = Gauge("cweb_jobs", "Jobs by state", ["state"], registry=r)
        self.job_seconds = Histogram("cweb_job_seconds", "Job duration from start to its terminal event", ["state"], registry=r)
        self.builds = Counter("cweb_builds_total", "Builds by outcome", ["outcome"], registry=r)
        self.build_seconds = Histogram("cweb_build_seconds", "Build time of compiled (not cached) builds", registry=r)
        self.restarts = Counter("cweb_worker_restarts_total", "Worker processes restarted after a crash", ["module"], registry=r)
        self.quarantines = Counter("cweb_quarantines_total", "Modules quarantined after repeated crashes", ["module"], registry=r)
        self.modules = Gauge("cweb_modules", "Active modules", registry=r)
        # (module, route, status) -> (counter child, histogram child): labels() is too slow per request.
        self._children: dict[tuple, tuple] = {}

    def observe_request(self, module: str, route: str, status: int, seconds: float) -> None:
        key = (module, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(module, route, str(status)), self.latency.labels(module, route))
        children[0].inc()
        children[1].observe(seconds)

    async def render(self, host: "ModuleHost", jobs: "JobService") -> bytes:
        self.modules.set(len(host.active))
        self.ws_connections.clear()
        for name in host.active:
            self.ws_connections.labels(name).set(host.sockets.count(name))
        self.ws_messages.labels("in").set(host.sockets.messages_in)
        self.ws_messages.labels("out").set(host.sockets.messages_out)
        for state, n in (await jobs.counts()).items():
            self.jobs.labels(state).set(n)
        return generate_latest(self.registry)

    async def follow_jobs(self, jobs: "JobService") -> None:
        """Observe job durations from the live event stream of every job."""
        q = jobs.subscribe("*")
        started: dict[str, float] = {}
        try:
            while True:
                ev = await q.get()
                if ev["type"] == "started":
                    started[ev["job_uuid"]] = ev["ts"]
                elif ev["type"] in ("done", "failed", "canceled"):
                    t0 = started.pop(ev["job_uuid"], None)
                    if t0 is not None:
                        self.job_seconds.labels(ev["type"]).observe(max(0.0, ev["ts"] - t0))
                if len(started) > 100_000:
                    started.clear()
        except asyncio.CancelledError:
            jobs.unsubscribe("*", q)
            raise
