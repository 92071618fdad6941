"""Build -> load -> validate -> onload -> swap, and everything that changes
which module versions serve: removal, rollback, restore after restart, and
restarting crashed workers.

Only one deploy runs at a time (a lock); requests are never blocked by it:
they read `host.table`, which a deploy replaces in one assignment.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from api import routing
from api.errors import Invalid, NotFound, Unavailable, from_runtime
from api.registry import Registry
from api.runtime_client import AgentClient, EventsConn, WorkerPool, open_events
from api.settings import Settings
from api.sockets import CLOSE_INTERNAL, SocketHub
from runtime import protocol
from runtime.errors import RuntimeFailure

log = logging.getLogger("cweb.api")

# A module that crashes this often is quarantined until it is redeployed.
CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0
RESTART_BACKOFF_S = (0.05, 0.2, 0.5, 1.0, 2.0)
# Crash, restart and quarantine records kept for the status page (all modules together).
HISTORY = 500


@dataclass(eq=False)
class Version:
    """One artifact loaded in one worker process."""

    name: str
    module_hash: str
    decl: dict
    worker_id: int
    pool: WorkerPool
    source_sha256: str = ""
    build_key: str = ""
    deployed_at: float = 0.0
    jobs_pool: WorkerPool | None = None
    events: EventsConn | None = None
    state: str = "active"  # active | restarting | quarantined | retiring | stopped
    crashes: list[float] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # How long each deploy step took (load, onload + connections, swap), for the deploy answer.
    phases: dict = field(default_factory=dict)
    # Set while the api itself kills the worker (hung job or handler).
    replacing: bool = False

    def summary(self) -> dict:
        return {
            "name": self.name,
            "author": self.decl.get("author", ""),
            "module_hash": self.module_hash,
            "source_sha256": self.source_sha256,
            "build_key": self.build_key,
            "routes": [{"method": r["method"], "path": r["path"]} for r in self.decl["routes"]],
            "websockets": [{"path": w["path"]} for w in self.decl["websockets"]],
            "jobs": [{"name": j["name"]} for j in self.decl["jobs"]],
            "deployed_at": self.deployed_at,
            "state": self.state,
        }


def declaration_warnings(decl: dict, source_name: str = "") -> list[dict]:
    """The declaration's warnings (skipped slots, api/routing.py) shaped as
    compiler diagnostics, to follow the build's in the deploy answer."""
    return [{"file": source_name, "line": 0, "column": 0, "severity": "warning", "message": m}
            for m in decl.get("warnings", [])]


class ModuleHost:
    def __init__(self, settings: Settings, agent: AgentClient, registry: Registry) -> None:
        self.settings = settings
        self.agent = agent
        self.registry = registry
        self.active: dict[str, Version] = {}
        self.table = routing.RouteTable()
        self.by_worker: dict[int, Version] = {}
        self.lock = asyncio.Lock()
        self.retiring: set[Version] = set()
        # Versions loaded only because jobs are pinned to them (not routable).
        self.pinned: dict[str, Version] = {}
        self.pin_lock = asyncio.Lock()
        self.sockets = SocketHub(self, settings.ws_queue_limit, settings.request_timeout)
        # Set by create_app: metrics (restarts, quarantines) and a hook told of each activation.
        self.metrics: Any = None
        self.on_activate: Any = None
        # Set by the jobs service: answers a module's jobs_create().
        self.on_jobs_create = None
        # Set by the jobs service: whether jobs pinned to a version still need it.
        self.jobs_pending_for = None
        # Crashes, restarts and quarantines, newest last (GET /_cweb/history).
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY)
        # Set by create_app: told of every change of what serves (api/observe.py Changes).
        self.on_change: Any = None

    def _note(self, event: str, v: Version, **extra: Any) -> None:
        entry = {"ts": time.time(), "event": event, "module": v.name, "module_hash": v.module_hash, **extra}
        if event in ("crashed", "replaced", "restarted", "quarantined", "restart_failed"):
            self.history.append(entry)
        if self.on_change is not None:
            self.on_change("module", entry)

    def loaded_versions(self) -> list[Version]:
        """Every version with a worker: active, retiring, pinned."""
        return [*self.active.values(), *self.retiring, *self.pinned.values()]

    # ---- loading -----------------------------------------------------------

    async def _load(self, module_hash: str) -> tuple[int, dict]:
        try:
            r = await self.agent.call("load", hash=module_hash, max_response=self.settings.max_response_bytes)
        except RuntimeFailure as exc:
            raise from_runtime(exc) from exc
        return r["worker_id"], r["describe"]

    async def _replace_hung(self, worker_id: int) -> None:
        """A handler overran the request timeout and its grace: kill the worker
        as a crash, so it restarts with backoff (and counts toward quarantine)."""
        v = self.by_worker.get(worker_id)
        if v is None or v.worker_id != worker_id:
            return
        log.warning("module %s (%s): a handler did not return within the request timeout; replacing its worker",
                    v.name, v.module_hash[:12])
        try:
            await self.agent.call("kill", worker_id=worker_id, expected=False)
        except RuntimeFailure:
            pass

    async def _start(self, worker_id: int, decl: dict) -> tuple[WorkerPool, WorkerPool | None, EventsConn]:
        """Run onload, then open the request pool, the job pool and the events
        channel: connections the agent makes for exactly this worker."""
        try:
            await self.agent.call("start", worker_id=worker_id, name=decl["name"])
        except RuntimeFailure as exc:
            raise from_runtime(exc) from exc

        def connector(n: int) -> Awaitable[list[socket.socket]]:
            return self.agent.connect_worker(worker_id, n)

        pool = WorkerPool(connector, self.settings.worker_threads)
        pool.on_hung = lambda: asyncio.ensure_future(self._replace_hung(worker_id))
        jobs_pool = WorkerPool(connector, self.settings.job_threads) if decl["jobs"] else None
        sizes = [1, pool.size, jobs_pool.size if jobs_pool is not None else 0]
        try:
            # One round trip to the agent for every connection of this worker.
            socks = await connector(sum(sizes))
        except RuntimeFailure as exc:
            raise from_runtime(exc) from exc
        events = await open_events(socks[:1], lambda frame: self._on_worker_frame(worker_id, frame))
        await pool.open(socks[1 : 1 + sizes[1]])
        if jobs_pool is not None:
            await jobs_pool.open(socks[1 + sizes[1] :])
        return pool, jobs_pool, events

    def _on_worker_frame(self, worker_id: int, frame: bytes) -> None:
        kind = frame[0]
        if kind in (protocol.F_WS_SEND, protocol.F_WS_CLOSE_REQ):
            self.sockets.from_worker(worker_id, frame)
        elif kind == protocol.F_JOBS_CREATE and self.on_jobs_create is not None:
            version = self.by_worker.get(worker_id)
            if version is not None:
                asyncio.create_task(self.on_jobs_create(version, frame))

    async def _discard(self, worker_id: int) -> None:
        try:
            await self.agent.call("kill", worker_id=worker_id, expected=True)
        except RuntimeFailure:
            pass

    async def activate(self, module_hash: str, *, source_sha256: str, build_key: str, action: str = "deploy") -> tuple[Version, Version | None, bool]:
        """Load module_hash and make it the active version of its module.

        Returns (version, previous, noop). Any rejection leaves the previous
        version serving and nothing changed."""
        async with self.lock:
            for v in self.active.values():
                if v.module_hash == module_hash and v.state != "quarantined":
                    return v, None, True
            t0 = time.perf_counter()
            worker_id, desc = await self._load(module_hash)
            t1 = time.perf_counter()
            try:
                decl = routing.validate_declaration(desc)
                routing.check_conflicts(decl, list(self.active.values()))
                pool, jobs_pool, events = await self._start(worker_id, decl)
            except BaseException:
                await self._discard(worker_id)
                raise
            t2 = time.perf_counter()
            version = Version(decl["name"], module_hash, decl, worker_id, pool, source_sha256, build_key,
                              jobs_pool=jobs_pool, events=events)
            version.phases = {"load_ms": round((t1 - t0) * 1000, 2), "start_ms": round((t2 - t1) * 1000, 2)}
            version.ready.set()
            try:
                await self.registry.record_artifact(module_hash, decl, source_sha256, build_key)
                version.deployed_at = await self.registry.activate(decl["name"], module_hash, action)
            except BaseException:
                # Not recorded (a full disk: 507): not served either, and the
                # previous version keeps serving.
                version.state = "stopped"
                self._close_handles(version)
                await self._discard(worker_id)
                raise
            previous = self.active.get(decl["name"])
            self.by_worker[worker_id] = version
            self.active[decl["name"]] = version
            self._rebuild()
            if self.on_activate is not None:
                self.on_activate(version)
            if previous is not None:
                self._retire(previous)
            await self.sockets.migrate(version)
            version.phases["swap_ms"] = round((time.perf_counter() - t2) * 1000, 2)
            self._note(action if action != "deploy" else "activated", version,
                       previous_hash=previous.module_hash if previous else None)
            return version, previous, False

    async def dry_run(self, module_hash: str) -> dict:
        """Everything a deploy checks short of running onload: load the
        artifact in a worker, validate its declaration, check its routes
        against the active modules; then discard the worker. Returns the
        declaration; raises what a deploy of it would."""
        worker_id, desc = await self._load(module_hash)
        try:
            decl = routing.validate_declaration(desc)
            routing.check_conflicts(decl, list(self.active.values()))
        finally:
            await self._discard(worker_id)
        return decl

    def _rebuild(self) -> None:
        ordered = sorted(self.active.values(), key=lambda v: v.deployed_at)
        self.table = routing.RouteTable(ordered)

    def _retire(self, old: Version) -> None:
        old.state = "retiring"
        self.retiring.add(old)
        asyncio.create_task(self._drain_and_stop(old))

    async def _drain_and_stop(self, old: Version) -> None:
        """Let requests and pinned jobs that started on old finish, then unload and stop it."""
        try:
            await asyncio.wait_for(old.pool.drain(), self.settings.request_timeout + 5)
        except TimeoutError:
            log.warning("module %s %s did not drain; stopping it anyway", old.name, old.module_hash[:12])
        while self.jobs_pending_for is not None and await self.jobs_pending_for(old):
            await asyncio.sleep(0.2)
        old.state = "stopping"
        self._close_handles(old)
        self.by_worker.pop(old.worker_id, None)
        try:
            await self.agent.call("stop", worker_id=old.worker_id)
        except RuntimeFailure:
            pass
        old.state = "stopped"
        self.retiring.discard(old)

    @staticmethod
    def _close_handles(v: Version) -> None:
        v.pool.close()
        if v.jobs_pool is not None:
            v.jobs_pool.close()
        if v.events is not None:
            v.events.close()

    # ---- versions that jobs are pinned to -------------------------------------

    async def version_for_hash(self, module_hash: str) -> Version | None:
        """The loaded version of exactly this artifact, loading it if jobs need it."""
        for v in self.active.values():
            if v.module_hash == module_hash:
                if v.state == "quarantined":
                    raise Invalid(f"module {v.name} is quarantined after repeated crashes; redeploy it", code="quarantined")
                if v.state == "restarting":
                    await asyncio.wait_for(v.ready.wait(), 30)
                if v.state == "active":
                    return v
        for v in self.retiring:
            if v.module_hash == module_hash and v.state == "retiring":
                return v
        async with self.pin_lock:
            v = self.pinned.get(module_hash)
            if v is not None and v.state == "pinned":
                return v
            worker_id, desc = await self._load(module_hash)
            try:
                decl = routing.validate_declaration(desc)
                pool, jobs_pool, events = await self._start(worker_id, decl)
            except BaseException:
                await self._discard(worker_id)
                raise
            art = await self.registry.artifact(module_hash) or {}
            v = Version(decl["name"], module_hash, decl, worker_id, pool, art.get("source_sha256", ""), art.get("build_key", ""),
                        jobs_pool=jobs_pool, events=events, state="pinned")
            v.ready.set()
            self.pinned[module_hash] = v
            self.by_worker[worker_id] = v
            log.info("loaded %s %s for jobs pinned to it", v.name, module_hash[:12])
            return v

    def job_finished(self, module_hash: str) -> None:
        """A job of module_hash ended: a pinned-only version with no work left goes away."""
        v = self.pinned.get(module_hash)
        if v is None or v.state != "pinned":
            return

        async def maybe_retire() -> None:
            if self.jobs_pending_for is not None and await self.jobs_pending_for(v):
                return
            if self.pinned.get(module_hash) is v:
                del self.pinned[module_hash]
                self._retire(v)

        asyncio.create_task(maybe_retire())

    async def reload_all(self) -> None:
        """The runtime agent restarted and took every worker with it: load them again."""
        for v in list(self.by_worker.values()):
            self._close_handles(v)
        self.by_worker.clear()
        for v in list(self.retiring) + list(self.pinned.values()):
            v.state = "stopped"
        self.retiring.clear()
        self.pinned.clear()
        for v in list(self.active.values()):
            if v.state == "quarantined":
                continue
            v.state = "restarting"
            v.ready.clear()
            try:
                worker_id, _ = await self._load(v.module_hash)
                v.pool, v.jobs_pool, v.events = await self._start(worker_id, v.decl)
            except Unavailable:
                # The agent went away again; the next reconnect reloads this module.
                return
            except Exception as exc:  # noqa: BLE001 - one module must not stop the others
                log.error("could not reload module %s: %s", v.name, exc)
                v.state = "quarantined"
                v.ready.set()
                continue
            v.worker_id = worker_id
            self.by_worker[worker_id] = v
            v.state = "active"
            v.ready.set()
            await self.sockets.migrate(v)

    async def replace_worker(self, v: Version, reason: str) -> None:
        """Kill a worker whose code will not return; the crash path restarts it."""
        log.warning("replacing worker of %s (%s): %s", v.name, v.module_hash[:12], reason)
        # A replacement is not a crash: it must not count toward quarantine.
        v.replacing = True
        try:
            await self.agent.call("kill", worker_id=v.worker_id, expected=False)
        except RuntimeFailure:
            pass

    # ---- removal and listing -------------------------------------------------

    async def remove(self, name: str) -> None:
        async with self.lock:
            if name not in self.active:
                raise NotFound(f"no module named {name!r}", code="module_not_found")
            # Recorded first: a registry that cannot write (507, 503) leaves the module serving.
            await self.registry.remove(name)
            v = self.active.pop(name)
            self._rebuild()
            self.sockets.close_module(name)
            self._retire(v)
            self._note("removed", v)

    def get(self, name: str) -> Version:
        v = self.active.get(name)
        if v is None:
            raise NotFound(f"no module named {name!r}", code="module_not_found")
        return v

    # ---- restart after a restart of the server ------------------------------

    async def restore(self) -> None:
        """Bring back every module that was active, from the store, no compile."""
        for name, module_hash, deployed_at in await self.registry.active():
            art = await self.registry.artifact(module_hash)
            try:
                worker_id, desc = await self._load(module_hash)
                decl = routing.validate_declaration(desc)
                pool, jobs_pool, events = await self._start(worker_id, decl)
            except Exception as exc:  # noqa: BLE001 - one bad module must not stop the server
                log.error("could not restore module %s (%s): %s", name, module_hash[:12], exc)
                continue
            v = Version(name, module_hash, decl, worker_id, pool,
                        art["source_sha256"] if art else "", art["build_key"] if art else "", deployed_at,
                        jobs_pool=jobs_pool, events=events)
            v.ready.set()
            self.active[name] = v
            self.by_worker[worker_id] = v
            if self.on_activate is not None:
                self.on_activate(v)
        self._rebuild()

    # ---- crashes ----------------------------------------------------------------

    async def on_agent_event(self, event: dict) -> None:
        if event.get("event") != "exited" or event.get("expected"):
            return
        v = self.by_worker.pop(event["worker_id"], None)
        if v is None:
            return
        self._close_handles(v)
        if v.state in ("retiring", "stopping", "stopped", "pinned"):
            # Not routable: nothing to restart. Pinned jobs reload it on demand.
            self.retiring.discard(v)
            if self.pinned.get(v.module_hash) is v:
                del self.pinned[v.module_hash]
            v.state = "stopped"
            return
        log.warning("module %s (%s) worker crashed: %s", v.name, v.module_hash[:12], event.get("reason"))
        now = time.monotonic()
        v.crashes = [t for t in v.crashes if now - t < CRASH_WINDOW_S]
        self._note("crashed" if not v.replacing else "replaced", v, reason=event.get("reason") or "",
                   returncode=event.get("returncode"))
        if not v.replacing:
            v.crashes.append(now)
        v.replacing = False
        if len(v.crashes) >= CRASH_LIMIT:
            if self.metrics is not None:
                self.metrics.quarantines.labels(v.name, v.module_hash).inc()
            v.state = "quarantined"
            v.ready.set()
            self.sockets.close_module(v.name, code=CLOSE_INTERNAL)
            log.error("module %s quarantined after %d crashes in %.0f s", v.name, len(v.crashes), CRASH_WINDOW_S)
            self._note("quarantined", v, crashes=len(v.crashes))
            return
        v.state = "restarting"
        v.ready.clear()
        if self.metrics is not None:
            self.metrics.restarts.labels(v.name, v.module_hash).inc()
        await asyncio.sleep(RESTART_BACKOFF_S[min(max(len(v.crashes) - 1, 0), len(RESTART_BACKOFF_S) - 1)])
        if self.active.get(v.name) is not v:
            return
        try:
            worker_id, _ = await self._load(v.module_hash)
            pool, jobs_pool, events = await self._start(worker_id, v.decl)
        except Exception as exc:  # noqa: BLE001
            log.error("restart of module %s failed: %s", v.name, exc)
            v.state = "quarantined"
            v.ready.set()
            self.sockets.close_module(v.name, code=CLOSE_INTERNAL)
            self._note("restart_failed", v, reason=str(exc))
            return
        if self.active.get(v.name) is not v:
            await self._discard(worker_id)
            return
        v.worker_id = worker_id
        v.pool, v.jobs_pool, v.events = pool, jobs_pool, events
        self.by_worker[worker_id] = v
        v.state = "active"
        v.ready.set()
        self._note("restarted", v, worker_id=worker_id)
        await self.sockets.migrate(v)
