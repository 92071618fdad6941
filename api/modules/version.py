"""A module version: one artifact loaded in one worker process, and the
states it moves through."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from api.modules.spawner import Spawned
    from runtime.client import EventsConn, WorkerPool


class VersionState(StrEnum):
    """Where a version stands. A str, so it is its own JSON (GET /modules)."""

    ACTIVE = "active"            # routable and serving
    RESTARTING = "restarting"    # routable; its worker crashed and a new one is starting
    QUARANTINED = "quarantined"  # routable name, answers 503 until redeployed
    RETIRING = "retiring"        # replaced or removed: in-flight requests and pinned jobs finish
    STOPPING = "stopping"        # drained; its worker is being stopped
    STOPPED = "stopped"          # gone
    PINNED = "pinned"            # loaded only for jobs pinned to its hash; never routable
    FORWARDED = "forwarded"      # served by another node of the cluster; routable here, forwarded there


# The states in which a version will never serve a request again.
GONE = frozenset({VersionState.RETIRING, VersionState.STOPPING, VersionState.STOPPED})


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
    state: VersionState = VersionState.ACTIVE
    crashes: list[float] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # How long each deploy step took (load, onload + connections, swap), for the deploy answer.
    phases: dict = field(default_factory=dict)
    # Set while the api itself kills the worker (hung job or handler).
    replacing: bool = False

    @classmethod
    def of(cls, spawned: Spawned, module_hash: str, *, source_sha256: str = "", build_key: str = "",
           deployed_at: float = 0.0, state: VersionState = VersionState.ACTIVE) -> Version:
        v = cls(spawned.decl["name"], module_hash, spawned.decl, spawned.worker_id, spawned.pool, source_sha256, build_key,
                deployed_at, jobs_pool=spawned.jobs_pool, events=spawned.events, state=state)
        v.phases = {"load_ms": spawned.load_ms, "start_ms": spawned.start_ms}
        v.ready.set()
        return v

    def attach(self, spawned: Spawned) -> None:
        """Serve from a new worker of the same artifact (after a crash or an agent restart)."""
        self.worker_id = spawned.worker_id
        self.pool, self.jobs_pool, self.events = spawned.pool, spawned.jobs_pool, spawned.events

    def close_handles(self) -> None:
        self.pool.close()
        if self.jobs_pool is not None:
            self.jobs_pool.close()
        if self.events is not None:
            self.events.close()

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
