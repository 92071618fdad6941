"""The one way a worker becomes usable: load -> validate -> start -> connect.

Every caller (deploy, rollback, restore, reload after an agent restart, a
crash restart, a version loaded for pinned jobs) goes through `Spawner.spawn`,
so a failure at any step -- including cancellation -- discards the worker
the same way and nothing is left running in the agent."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from api import routing, secrets
from api.artifacts import Artifacts
from api.errors import from_runtime
from api.settings import Settings
from runtime.client import AgentClient, EventsConn, WorkerPool, open_events
from runtime.errors import RuntimeFailure


@dataclass(eq=False)
class Spawned:
    """A started worker and its connections, not yet part of any Version."""

    worker_id: int
    decl: dict
    pool: WorkerPool
    jobs_pool: WorkerPool | None
    events: EventsConn
    load_ms: float
    start_ms: float

    def close_handles(self) -> None:
        self.pool.close()
        if self.jobs_pool is not None:
            self.jobs_pool.close()
        self.events.close()


class Spawner:
    def __init__(self, settings: Settings, agent: AgentClient, on_frame: Callable[[int, bytes], None],
                 on_hung: Callable[[int], None]) -> None:
        self.settings = settings
        self.agent = agent
        # Frames a worker sends on its events channel (socket sends, jobs_create).
        self.on_frame = on_frame
        # A handler of this worker overran the request timeout and its grace.
        self.on_hung = on_hung
        # The modules' secrets (api/secrets.py SecretStore), set by create_app;
        # handed to each worker as it starts, before onload.
        self.secrets: Any = None
        # Fetches an artifact this node does not have from the object store
        # (api/artifacts.py), set by create_app; a no-op without one.
        self.artifacts = Artifacts()

    async def spawn(self, module_hash: str, check: Callable[[dict], None] | None = None) -> Spawned:
        """A running worker for module_hash with its request pool, job pool and
        events channel. check(decl) may refuse the declaration (route conflicts)
        before onload runs. Raises an api error; the worker is gone then."""
        t0 = time.perf_counter()
        await self.artifacts.ensure(module_hash)
        try:
            r = await self.agent.call("load", hash=module_hash, max_response=self.settings.max_response_bytes)
        except RuntimeFailure as exc:
            raise from_runtime(exc) from exc
        worker_id = r["worker_id"]
        t1 = time.perf_counter()
        opened: list[WorkerPool | EventsConn] = []
        try:
            decl = routing.validate_declaration(r["describe"])
            if check is not None:
                check(decl)
            pool, jobs_pool, events = await self._start(worker_id, decl, opened)
        except BaseException:
            for handle in opened:
                handle.close()
            await self.discard(worker_id)
            raise
        t2 = time.perf_counter()
        return Spawned(worker_id, decl, pool, jobs_pool, events,
                       load_ms=round((t1 - t0) * 1000, 2), start_ms=round((t2 - t1) * 1000, 2))

    async def dry_run(self, module_hash: str, check: Callable[[dict], None] | None = None) -> dict:
        """load -> validate -> check, then discard the worker whatever happened:
        the declaration a deploy would get, or the error it would raise."""
        await self.artifacts.ensure(module_hash)
        try:
            r = await self.agent.call("load", hash=module_hash, max_response=self.settings.max_response_bytes)
        except RuntimeFailure as exc:
            raise from_runtime(exc) from exc
        try:
            decl = routing.validate_declaration(r["describe"])
            if check is not None:
                check(decl)
        finally:
            await self.discard(r["worker_id"])
        return decl

    async def _start(self, worker_id: int, decl: dict, opened: list) -> tuple[WorkerPool, WorkerPool | None, EventsConn]:
        """Run onload, then open the request pool, the job pool and the events
        channel: connections the agent makes for exactly this worker."""
        try:
            await self.agent.call("start", worker_id=worker_id, name=decl["name"],
                                  secrets=secrets.for_worker(self.secrets, decl["name"]))
        except RuntimeFailure as exc:
            raise from_runtime(exc) from exc

        def connector(n: int) -> Awaitable[list[socket.socket]]:
            return self.agent.connect_worker(worker_id, n)

        pool = WorkerPool(connector, self.settings.worker_threads, on_hung=lambda: self.on_hung(worker_id))
        jobs_pool = WorkerPool(connector, self.settings.job_threads) if decl["jobs"] else None
        sizes = [1, pool.size, jobs_pool.size if jobs_pool is not None else 0]
        try:
            # One round trip to the agent for every connection of this worker.
            socks = await connector(sum(sizes))
        except RuntimeFailure as exc:
            raise from_runtime(exc) from exc
        events = await open_events(socks[:1], lambda frame: self.on_frame(worker_id, frame))
        opened.append(events)
        opened.append(pool)
        await pool.open(socks[1 : 1 + sizes[1]])
        if jobs_pool is not None:
            opened.append(jobs_pool)
            await jobs_pool.open(socks[1 + sizes[1] :])
        return pool, jobs_pool, events

    async def discard(self, worker_id: int) -> None:
        """Kill a worker that never served (expected: not a crash)."""
        try:
            await self.agent.call("kill", worker_id=worker_id, expected=True)
        except RuntimeFailure:
            pass

    async def discard_spawned(self, spawned: Spawned) -> None:
        spawned.close_handles()
        await self.discard(spawned.worker_id)

    async def stop(self, worker_id: int) -> None:
        """Run the module's unload and stop its worker."""
        try:
            await self.agent.call("stop", worker_id=worker_id)
        except RuntimeFailure:
            pass

    async def kill(self, worker_id: int) -> None:
        """Kill a worker as a crash: the supervisor restarts it."""
        try:
            await self.agent.call("kill", worker_id=worker_id, expected=False)
        except RuntimeFailure:
            pass

