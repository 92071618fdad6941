"""Prometheus metrics (prometheus-client), one registry per server.

    cweb_requests_total{module,route,status}     module route requests (fast path)
    cweb_request_seconds{module,route}           their latency (histogram)
    cweb_unmatched_requests_total{reason}        requests no module route took (no_route, method_not_allowed, no_socket)
    cweb_ws_connections{module}                  open module WebSocket connections
    cweb_ws_messages_total{module,direction}     socket messages in (from clients) / out
    cweb_jobs{module,state}                      jobs by state, counted in the jobs DB
    cweb_job_seconds{module,state}               start -> terminal event (histogram)
    cweb_builds_total{outcome}                   deploys' builds: compiled, cache_hit, joined, failed
    cweb_build_seconds                           compile time of builds that compiled
    cweb_deploys_total{outcome,error}            POST /mgnt: activated, unchanged, rejected, build_failed; error code
    cweb_build_queue_depth                       builds waiting in the farm's queue
    cweb_build_queue_seconds                     time a build waited for a builder (histogram)
    cweb_build_compile_seconds{builder}          time on a builder (histogram)
    cweb_farm_builds_total{builder,outcome}      farm builds by builder: done, cache_hit, failed
    cweb_build_slots{builder}                    slots of each builder (running: cweb_build_running)
    cweb_worker_restarts_total{module,module_hash}  workers restarted after a crash
    cweb_quarantines_total{module,module_hash}   modules quarantined for crashing
    cweb_module_info{module,module_hash,state}   1 per loaded version (join on module_hash)
    cweb_modules                                 active modules
    cweb_store_artifacts, cweb_store_bytes       artifacts in the content-addressed store
    cweb_cache_capacity_bytes                    size of the cross-module cache
    cweb_build_info{version,abi,python}          1, the running server's version
    process_*                                    prometheus-client's process collector (CPU, memory, fds)

No label takes a value from the request: paths that match no route are
counted by reason only, so a scanner cannot grow the series count. What
users must watch (README "Metrics"): `route` grows with the routes
modules declare, `module_hash` with the versions deployed (restarts and
quarantines keep a series per version that crashed), `module` with modules.

Counters on the request path are bumped through pre-bound children; values
that live elsewhere (sockets, jobs, the store) are read at scrape time.
"""

from __future__ import annotations

import asyncio
import bisect
import importlib.metadata
import os
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from api import cache_admin
from runtime import abi

if TYPE_CHECKING:
    from api.jobs.service import JobService
    from api.modules.host import ModuleHost
    from builder.farm import Build, BuildFarm

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BUILD_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 86400)


class _ScrapeTime(Collector):
    """Metrics whose values are read when /metrics is rendered."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        v = self.values
        ws = CounterMetricFamily("cweb_ws_messages", "Module WebSocket messages since start", labels=["module", "direction"])
        for direction in ("in", "out"):
            for module, n in v.get("ws_" + direction, {}).items():
                ws.add_metric([module, direction], n)
        yield ws
        unmatched = CounterMetricFamily("cweb_unmatched_requests", "Requests no module route or socket took, by reason",
                                        labels=["reason"])
        for reason, n in v.get("unmatched", {}).items():
            unmatched.add_metric([reason], n)
        yield unmatched
        info = GaugeMetricFamily("cweb_module_info", "Loaded module versions (1 each); join on module_hash",
                                 labels=["module", "module_hash", "state"])
        for module, module_hash, state in v.get("versions", ()):
            info.add_metric([module, module_hash, state], 1)
        yield info
        yield GaugeMetricFamily("cweb_store_artifacts", "Artifacts in the content-addressed store", value=v.get("artifacts", 0))
        yield GaugeMetricFamily("cweb_store_bytes", "Bytes of artifacts in the content-addressed store", value=v.get("store_bytes", 0))
        yield GaugeMetricFamily("cweb_cache_capacity_bytes", "Size of the cross-module cache shared by modules", value=v.get("cache_bytes", 0))


class _RequestStats(Collector):
    """Request counts and latency histograms kept as plain numbers on the hot
    path (the event loop is the only writer) and turned into metric families
    only when /metrics is scraped: prometheus-client's locked children cost
    more per request than the rest of the bookkeeping together."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        # (module, route) -> [bucket counts..., sum]
        self.hists: dict[tuple[str, str], list[float]] = {}

    def observe(self, module: str, route: str, status: int, seconds: float, method: str = "") -> None:
        # method: for the request lines of `cweb logs -f` (api/observe.py LogHub._tap); not a label.
        key = (module, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        hist = self.hists.get((module, route))
        if hist is None:
            hist = self.hists[(module, route)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        hist[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        hist[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("cweb_requests", "Module route requests", labels=["module", "route", "status"])
        for (module, route, status), n in self.counts.items():
            requests.add_metric([module, route, str(status)], n)
        yield requests
        latency = HistogramMetricFamily("cweb_request_seconds", "Module route latency", labels=["module", "route"])
        for (module, route), hist in self.hists.items():
            cumulative, buckets = 0.0, []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), hist[:-1], strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([module, route], buckets, hist[-1])
        yield latency


def server_version() -> str:
    try:
        return importlib.metadata.version("cweb")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(self, store_dir: str = "", data_dir: str = "") -> None:
        # The *_created series double the output and nobody graphs them. Process-wide,
        # which is fine: the server has one registry.
        prometheus_client.disable_created_metrics()
        self.store_dir = store_dir
        self.data_dir = data_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = self.request_stats = _RequestStats()
        r.register(self._requests)
        # observe_request(module, route, status, seconds, method), bound once: it runs per request.
        self.observe_request = self._requests.observe
        self.ws_connections = Gauge("cweb_ws_connections", "Open module WebSocket connections", ["module"], registry=r)
        self.jobs = Gauge("cweb_jobs", "Jobs by module and state", ["module", "state"], registry=r)
        self.job_seconds = Histogram("cweb_job_seconds", "Job duration from start to its terminal event", ["module", "state"],
                                     buckets=JOB_BUCKETS, registry=r)
        self.builds = Counter("cweb_builds_total", "Builds by outcome", ["outcome"], registry=r)
        # Deploys (not ?check=1 dry runs), by what became of them; error is
        # the refusal's code (route_conflict, invalid_regex, ...), "" on success.
        self.deploys = Counter("cweb_deploys_total", "Deploys by outcome and error code", ["outcome", "error"], registry=r)
        self.build_seconds = Histogram("cweb_build_seconds", "Build time of compiled (not cached) builds", registry=r)
        self.restarts = Counter("cweb_worker_restarts_total", "Worker processes restarted after a crash",
                                ["module", "module_hash"], registry=r)
        self.quarantines = Counter("cweb_quarantines_total", "Modules quarantined after repeated crashes",
                                   ["module", "module_hash"], registry=r)
        self.modules = Gauge("cweb_modules", "Active modules", registry=r)
        build = Gauge("cweb_build_info", "The running server (always 1)", ["version", "abi", "python"], registry=r)
        build.labels(server_version(), str(abi.ABI_VERSION), platform.python_version()).set(1)
        # CPU, resident memory, open descriptors of the api process (Linux /proc).
        ProcessCollector(registry=r)
        # Requests no route took, by reason: bumped off the matched path only
        # (api/dispatch.py serve's 404/405, api/sockets.py's refused upgrade).
        self.unmatched: dict[str, int] = {}
        self.farm: BuildFarm | None = None
        self.queue_depth = Gauge("cweb_build_queue_depth", "Builds waiting in the farm's queue", registry=r)
        self.queue_seconds = Histogram("cweb_build_queue_seconds", "Time a build waited in the queue for a builder",
                                       buckets=BUILD_BUCKETS, registry=r)
        self.compile_seconds = Histogram("cweb_build_compile_seconds", "Time a build spent on a builder", ["builder"],
                                         buckets=BUILD_BUCKETS, registry=r)
        self.farm_builds = Counter("cweb_farm_builds_total", "Farm builds by builder and outcome", ["builder", "outcome"], registry=r)
        self.build_slots = Gauge("cweb_build_slots", "Build slots per builder", ["builder"], registry=r)
        self.build_running = Gauge("cweb_build_running", "Builds running per builder", ["builder"], registry=r)
        self._scrape = _ScrapeTime()
        r.register(self._scrape)


    def observe_build(self, build: Build) -> None:
        """A farm build finished (BuildFarm.on_finish)."""
        builder = build.builder or "none"
        outcome = "failed" if build.state == "failed" else "cache_hit" if build.cache_hit else "done"
        self.farm_builds.labels(builder, outcome).inc()
        if build.builder != "cache" and build.attempts:
            self.queue_seconds.observe(build.queue_ms / 1000)
            self.compile_seconds.labels(builder).observe(build.compile_ms / 1000)

    async def render(self, host: ModuleHost, jobs: JobService, store_dir: str = "", data_dir: str = "") -> bytes:
        """The text exposition, with the scrape-time values refreshed."""
        if self.farm is not None:
            self.queue_depth.set(len(self.farm.queue))
            self.build_slots.clear()
            self.build_running.clear()
            for b in self.farm.builders:
                self.build_slots.labels(b["name"]).set(b["slots"])
                self.build_running.labels(b["name"]).set(b["running"])
        self.modules.set(len(host.active))
        self.ws_connections.clear()
        for name in host.active:
            self.ws_connections.labels(name).set(host.sockets.count(name))
        self.jobs.clear()
        for (module, state), n in (await jobs.counts_by_module()).items():
            self.jobs.labels(module, state).set(n)
        values: dict = await asyncio.to_thread(_disk_sizes, store_dir or self.store_dir, data_dir or self.data_dir)
        values["ws_in"] = dict(host.sockets.messages_in)
        values["ws_out"] = dict(host.sockets.messages_out)
        values["unmatched"] = dict(self.unmatched)
        values["versions"] = [(v.name, v.module_hash, v.state) for v in host.loaded_versions()]
        self._scrape.values = values
        return generate_latest(self.registry)

    async def follow_jobs(self, jobs: JobService) -> None:
        """Observe job durations from the live event stream of every job."""
        q = jobs.subscribe("*")
        started: dict[str, tuple[float, str]] = {}
        try:
            while True:
                ev = await q.get()
                if ev["type"] == "started":
                    started[ev["job_uuid"]] = (ev["ts"], jobs.module_of(ev["job_uuid"]))
                elif ev["type"] in ("done", "failed", "canceled"):
                    t0, module = started.pop(ev["job_uuid"], (None, ""))
                    if t0 is not None:
                        self.job_seconds.labels(module, ev["type"]).observe(max(0.0, ev["ts"] - t0))
                if len(started) > 100_000:
                    started.clear()
        except asyncio.CancelledError:
            jobs.unsubscribe("*", q)
            raise


def _disk_sizes(store_dir: str, data_dir: str) -> dict[str, float]:
    """Artifact count and bytes in the store, and the cache's size.

    Zero for what this process cannot see (the store of a remote builder)."""
    artifacts = size = 0
    if store_dir:
        try:
            with os.scandir(os.path.join(store_dir, "artifacts")) as it:
                for entry in it:
                    if entry.name.endswith(".so") and entry.is_file(follow_symlinks=False):
                        artifacts += 1
                        size += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    # The cache is memory of the runtime agent; its size is the configured one.
    return {"artifacts": artifacts, "store_bytes": size, "cache_bytes": cache_admin.capacity()}
