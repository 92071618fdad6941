"""Which module versions serve: deploy (activate), removal, restore after a
restart, and retiring replaced versions.

Only one deploy runs at a time (a lock); requests are never blocked by it:
they read `host.table`, which a deploy replaces in one assignment.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from api import routing
from api.errors import NotFound
from api.modules.pinning import JobDemand, NoJobs, Pins
from api.modules.spawner import Spawned, Spawner
from api.modules.supervisor import Supervisor
from api.modules.version import Version, VersionState
from api.registry import RegistryStore
from api.settings import Settings
from api.sockets import SocketHub
from runtime import protocol
from runtime.client import AgentClient

log = logging.getLogger("cweb.api")

# Crash, restart and quarantine records kept for the status page (all modules together).
HISTORY = 500


class ModuleHost:
    def __init__(self, settings: Settings, agent: AgentClient, registry: RegistryStore, *,
                 jobs: JobDemand | None = None, metrics: Any = None,
                 on_activate: Callable[[Version], None] | None = None,
                 on_change: Callable[[str, dict], None] | None = None) -> None:
        self.settings = settings
        self.agent = agent
        self.registry = registry
        # Pending jobs keep versions alive; jobs_create() frames go there.
        self.jobs: JobDemand = jobs if jobs is not None else NoJobs()
        # Counts restarts and quarantines (api/metrics.py); None in no metrics.
        self.metrics = metrics
        # Told of each activation (the log hub follows the new hash).
        self.on_activate = on_activate
        # Told of every change of what serves (api/observe.py Changes).
        self.on_change = on_change
        # Crashes, restarts and quarantines, newest last (GET /_cweb/history).
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY)
        self.active: dict[str, Version] = {}
        self.table = routing.RouteTable()
        self.by_worker: dict[int, Version] = {}
        self.lock = asyncio.Lock()
        self.retiring: set[Version] = set()
        self.sockets = SocketHub(self, settings.ws_queue_limit, settings.request_timeout, metrics=metrics)
        self.supervisor = Supervisor(self)
        self.spawner = Spawner(settings, agent, self._on_worker_frame, self.supervisor.on_hung)
        self.pins = Pins(self)
        # Loaded and started ahead of a cluster-wide swap (api/cluster): hash -> worker.
        self.prepared: dict[str, Spawned] = {}
        # Modules another node serves, whose routes this node forwards there
        # (api/cluster/forward.py RemoteModule): routable, never local.
        self.remote: dict[str, Any] = {}

    @property
    def pinned(self) -> dict[str, Version]:
        return self.pins.pinned

    def note(self, event: str, v: Version, **extra: Any) -> None:
        entry = {"ts": time.time(), "event": event, "module": v.name, "module_hash": v.module_hash, **extra}
        if event in ("crashed", "replaced", "restarted", "quarantined", "restart_failed"):
            self.history.append(entry)
        if self.on_change is not None:
            self.on_change("module", entry)

    def loaded_versions(self) -> list[Version]:
        """Every version with a worker: active, retiring, pinned."""
        return [*self.active.values(), *self.retiring, *self.pins.pinned.values()]

    def _on_worker_frame(self, worker_id: int, frame: bytes) -> None:
        kind = frame[0]
        if kind in (protocol.F_WS_SEND, protocol.F_WS_CLOSE_REQ):
            self.sockets.from_worker(worker_id, frame)
        elif kind == protocol.F_JOBS_CREATE:
            version = self.by_worker.get(worker_id)
            if version is not None:
                asyncio.create_task(self.jobs.on_jobs_create(version, frame))

    # ---- deploy ----------------------------------------------------------------

    def _check(self, decl: dict) -> None:
        routing.check_conflicts(decl, [*self.active.values(), *self.remote.values()])

    async def activate(self, module_hash: str, *, source_sha256: str, build_key: str, action: str = "deploy",
                       deployed_at: float | None = None) -> tuple[Version, Version | None, bool]:
        """Load module_hash (or take the worker prepare() started for it) and
        make it the active version of its module.

        The registry records it first, unless deployed_at is given: then the
        caller has recorded it already (a cluster's swap, api/cluster).
        Returns (version, previous, noop). Any rejection leaves the previous
        version serving and nothing changed."""
        async with self.lock:
            for v in self.active.values():
                if v.module_hash == module_hash and v.state != VersionState.QUARANTINED:
                    return v, None, True
            spawned = self.prepared.pop(module_hash, None)
            if spawned is None:
                spawned = await self.spawner.spawn(module_hash, check=self._check)
            t2 = time.perf_counter()
            version = Version.of(spawned, module_hash, source_sha256=source_sha256, build_key=build_key)
            try:
                if deployed_at is None:
                    await self.registry.record_artifact(module_hash, version.decl, source_sha256, build_key)
                    deployed_at = await self.registry.activate(version.name, module_hash, action)
                version.deployed_at = deployed_at
            except BaseException:
                # Not recorded (a full disk: 507): not served either, and the
                # previous version keeps serving.
                version.state = VersionState.STOPPED
                await self.spawner.discard_spawned(spawned)
                raise
            previous = self.active.get(version.name)
            self.by_worker[version.worker_id] = version
            self.active[version.name] = version
            self.remote.pop(version.name, None)
            self._rebuild()
            if self.on_activate is not None:
                self.on_activate(version)
            if previous is not None:
                self.retire(previous)
            await self.sockets.migrate(version)
            version.phases["swap_ms"] = round((time.perf_counter() - t2) * 1000, 2)
            self.note(action if action != "deploy" else "activated", version,
                      previous_hash=previous.module_hash if previous else None)
            return version, previous, False

    async def dry_run(self, module_hash: str) -> dict:
        """Everything a deploy checks short of running onload: load the
        artifact in a worker, validate its declaration, check its routes
        against the active modules; then discard the worker. Returns the
        declaration; raises what a deploy of it would."""
        return await self.spawner.dry_run(module_hash, check=self._check)

    async def prepare(self, module_hash: str, ttl: float) -> tuple[str, dict]:
        """Load and start module_hash without serving it, so that a cluster's
        swap (api/cluster) finds it ready: ("prepared" | "serving", its
        declaration). What activate() would refuse is raised here. A worker
        not swapped in within ttl seconds (its deploy died) is discarded."""
        async with self.lock:
            for v in self.active.values():
                if v.module_hash == module_hash and v.state != VersionState.QUARANTINED:
                    return "serving", v.decl
            spawned = self.prepared.get(module_hash)
            if spawned is None:
                spawned = self.prepared[module_hash] = await self.spawner.spawn(module_hash, check=self._check)
                asyncio.get_running_loop().call_later(ttl, lambda: asyncio.create_task(self.unprepare(module_hash, spawned)))
            return "prepared", spawned.decl

    async def unprepare(self, module_hash: str, spawned: Spawned | None = None) -> None:
        """Discard a prepared worker that will not be swapped in (only spawned, if given)."""
        current = self.prepared.get(module_hash)
        if current is not None and (spawned is None or current is spawned):
            del self.prepared[module_hash]
            await self.spawner.discard_spawned(current)

    def set_remote(self, module: Any) -> None:
        """Route module.name's paths to the node that serves it (api/cluster)."""
        self.remote[module.name] = module
        self._rebuild()

    def drop_remote(self, name: str) -> bool:
        if self.remote.pop(name, None) is None:
            return False
        self._rebuild()
        return True

    def _rebuild(self) -> None:
        ordered = sorted([*self.active.values(), *self.remote.values()], key=lambda v: v.deployed_at)
        self.table = routing.RouteTable(ordered)

    def retire(self, old: Version) -> None:
        old.state = VersionState.RETIRING
        self.retiring.add(old)
        asyncio.create_task(self._drain_and_stop(old))

    async def _drain_and_stop(self, old: Version) -> None:
        """Let requests and pinned jobs that started on old finish, then unload and stop it."""
        try:
            await asyncio.wait_for(old.pool.drain(), self.settings.request_timeout + 5)
        except TimeoutError:
            log.warning("module %s %s did not drain; stopping it anyway", old.name, old.module_hash[:12])
        while await self.jobs.pending_for(old):
            await asyncio.sleep(0.2)
        old.state = VersionState.STOPPING
        old.close_handles()
        self.by_worker.pop(old.worker_id, None)
        await self.spawner.stop(old.worker_id)
        old.state = VersionState.STOPPED
        self.retiring.discard(old)

    # ---- what jobs use -----------------------------------------------------------

    async def version_for_hash(self, module_hash: str) -> Version | None:
        """The loaded version of exactly this artifact, loading it if jobs need it."""
        return await self.pins.version_for_hash(module_hash)

    def job_finished(self, module_hash: str) -> None:
        self.pins.job_finished(module_hash)

    async def replace_worker(self, v: Version, reason: str) -> None:
        """Kill a worker whose code will not return; the crash path restarts it."""
        await self.supervisor.replace_worker(v, reason)

    # ---- removal and listing -------------------------------------------------

    async def remove(self, name: str, *, record: bool = True) -> None:
        """Stop serving name; record: write the removal to the registry first
        (a cluster's other nodes follow a removal already recorded)."""
        async with self.lock:
            if name not in self.active:
                raise NotFound(f"no module named {name!r}", code="module_not_found")
            # Recorded first: a registry that cannot write (507, 503) leaves the module serving.
            if record:
                await self.registry.remove(name)
            v = self.active.pop(name)
            self._rebuild()
            self.sockets.close_module(name)
            self.retire(v)
            self.note("removed", v)

    def get(self, name: str) -> Version:
        v = self.active.get(name)
        if v is None:
            raise NotFound(f"no module named {name!r}", code="module_not_found")
        return v

    # ---- restart after a restart of the server ------------------------------

    async def restore(self) -> None:
        """Bring back every module that was active, from the store, no compile."""
        for name, module_hash, deployed_at in await self.registry.active():
            art = await self.registry.artifact(module_hash) or {}
            try:
                spawned = await self.spawner.spawn(module_hash)
            except Exception as exc:  # noqa: BLE001 - one bad module must not stop the server
                log.error("could not restore module %s (%s): %s", name, module_hash[:12], exc)
                continue
            v = Version.of(spawned, module_hash, source_sha256=art.get("source_sha256", ""),
                           build_key=art.get("build_key", ""), deployed_at=deployed_at)
            v.phases = {}
            self.active[name] = v
            self.by_worker[v.worker_id] = v
            if self.on_activate is not None:
                self.on_activate(v)
        self._rebuild()
