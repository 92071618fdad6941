"""Workers that die or hang: restart with backoff, quarantine a module that
keeps crashing, reload everything after the agent itself restarted."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from api.errors import Unavailable
from api.modules.version import Version, VersionState
from api.sockets import CLOSE_INTERNAL

if TYPE_CHECKING:
    from api.modules.host import ModuleHost

log = logging.getLogger("cweb.api")

# A module that crashes this often is quarantined until it is redeployed.
CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0
RESTART_BACKOFF_S = (0.05, 0.2, 0.5, 1.0, 2.0)


class Supervisor:
    def __init__(self, host: ModuleHost) -> None:
        self.host = host

    def on_hung(self, worker_id: int) -> None:
        """A handler overran the request timeout and its grace (from the pool's timer)."""
        asyncio.ensure_future(self._replace_hung(worker_id))

    async def _replace_hung(self, worker_id: int) -> None:
        """Kill the worker as a crash, so it restarts with backoff (and counts toward quarantine)."""
        v = self.host.by_worker.get(worker_id)
        if v is None or v.worker_id != worker_id:
            return
        log.warning("module %s (%s): a handler did not return within the request timeout; replacing its worker",
                    v.name, v.module_hash[:12])
        await self.host.spawner.kill(worker_id)

    async def replace_worker(self, v: Version, reason: str) -> None:
        """Kill a worker whose code will not return; the crash path restarts it."""
        log.warning("replacing worker of %s (%s): %s", v.name, v.module_hash[:12], reason)
        # A replacement is not a crash: it must not count toward quarantine.
        v.replacing = True
        await self.host.spawner.kill(v.worker_id)

    def _quarantine(self, v: Version) -> None:
        v.state = VersionState.QUARANTINED
        v.ready.set()
        self.host.sockets.close_module(v.name, code=CLOSE_INTERNAL)

    async def reload_all(self) -> None:
        """The runtime agent restarted and took every worker with it: load them again."""
        host = self.host
        for v in list(host.by_worker.values()):
            v.close_handles()
        host.by_worker.clear()
        for v in list(host.retiring) + list(host.pins.pinned.values()):
            v.state = VersionState.STOPPED
        host.retiring.clear()
        host.pins.pinned.clear()
        for v in list(host.active.values()):
            if v.state == VersionState.QUARANTINED:
                continue
            v.state = VersionState.RESTARTING
            v.ready.clear()
            try:
                spawned = await host.spawner.spawn(v.module_hash)
            except Unavailable:
                # The agent went away again; the next reconnect reloads this module.
                return
            except Exception as exc:  # noqa: BLE001 - one module must not stop the others
                log.error("could not reload module %s: %s", v.name, exc)
                v.state = VersionState.QUARANTINED
                v.ready.set()
                continue
            v.attach(spawned)
            host.by_worker[v.worker_id] = v
            v.state = VersionState.ACTIVE
            v.ready.set()
            await host.sockets.migrate(v)

    async def on_agent_event(self, event: dict) -> None:
        if event.get("event") != "exited" or event.get("expected"):
            return
        host = self.host
        v = host.by_worker.pop(event["worker_id"], None)
        if v is None:
            return
        v.close_handles()
        if v.state in (VersionState.RETIRING, VersionState.STOPPING, VersionState.STOPPED, VersionState.PINNED):
            # Not routable: nothing to restart. Pinned jobs reload it on demand.
            host.retiring.discard(v)
            host.pins.forget(v)
            v.state = VersionState.STOPPED
            return
        log.warning("module %s (%s) worker crashed: %s", v.name, v.module_hash[:12], event.get("reason"))
        now = time.monotonic()
        v.crashes = [t for t in v.crashes if now - t < CRASH_WINDOW_S]
        host.note("crashed" if not v.replacing else "replaced", v, reason=event.get("reason") or "",
                  returncode=event.get("returncode"))
        if not v.replacing:
            v.crashes.append(now)
        v.replacing = False
        if len(v.crashes) >= CRASH_LIMIT:
            if host.metrics is not None:
                host.metrics.quarantines.labels(v.name, v.module_hash).inc()
            self._quarantine(v)
            log.error("module %s quarantined after %d crashes in %.0f s", v.name, len(v.crashes), CRASH_WINDOW_S)
            host.note("quarantined", v, crashes=len(v.crashes))
            return
        v.state = VersionState.RESTARTING
        v.ready.clear()
        if host.metrics is not None:
            host.metrics.restarts.labels(v.name, v.module_hash).inc()
        await asyncio.sleep(RESTART_BACKOFF_S[min(max(len(v.crashes) - 1, 0), len(RESTART_BACKOFF_S) - 1)])
        if host.active.get(v.name) is not v:
            return
        try:
            spawned = await host.spawner.spawn(v.module_hash)
        except Exception as exc:  # noqa: BLE001
            log.error("restart of module %s failed: %s", v.name, exc)
            self._quarantine(v)
            host.note("restart_failed", v, reason=str(exc))
            return
        if host.active.get(v.name) is not v:
            await host.spawner.discard_spawned(spawned)
            return
        v.attach(spawned)
        host.by_worker[v.worker_id] = v
        v.state = VersionState.ACTIVE
        v.ready.set()
        host.note("restarted", v, worker_id=v.worker_id)
        await host.sockets.migrate(v)
