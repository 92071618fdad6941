"""Versions kept or loaded because jobs are pinned to their artifact.

A job runs on the exact artifact it was submitted to. When that artifact is
no longer the active version (a deploy replaced it), its worker stays while
jobs need it, or is loaded again just for them (state PINNED, never
routable), and goes away once no job needs it."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from api.errors import Invalid
from api.modules.version import Version, VersionState

if TYPE_CHECKING:
    from api.modules.host import ModuleHost

log = logging.getLogger("cweb.api")


class JobDemand(Protocol):
    """What the module host asks of the job service (api/jobs/service.py),
    given to ModuleHost at construction: the host never imports the jobs package."""

    async def pending_for(self, version: Version) -> bool:
        """Whether pending or running jobs still need this version's worker."""

    async def on_jobs_create(self, version: Version, frame: bytes) -> None:
        """A module called jobs_create() (an F_JOBS_CREATE frame on its events channel)."""


class NoJobs:
    """The JobDemand of a host without a job service: nothing is ever pinned."""

    async def pending_for(self, version: Version) -> bool:
        return False

    async def on_jobs_create(self, version: Version, frame: bytes) -> None:
        return None


class Pins:
    def __init__(self, host: ModuleHost) -> None:
        self.host = host
        # module_hash -> a version loaded only for jobs pinned to it.
        self.pinned: dict[str, Version] = {}
        self.lock = asyncio.Lock()

    async def version_for_hash(self, module_hash: str) -> Version | None:
        """The loaded version of exactly this artifact, loading it if jobs need it."""
        host = self.host
        for v in host.active.values():
            if v.module_hash == module_hash:
                if v.state == VersionState.QUARANTINED:
                    raise Invalid(f"module {v.name} is quarantined after repeated crashes; redeploy it", code="quarantined")
                if v.state == VersionState.RESTARTING:
                    await asyncio.wait_for(v.ready.wait(), 30)
                if v.state == VersionState.ACTIVE:
                    return v
        for v in host.retiring:
            if v.module_hash == module_hash and v.state == VersionState.RETIRING:
                return v
        async with self.lock:
            v = self.pinned.get(module_hash)
            if v is not None and v.state == VersionState.PINNED:
                return v
            spawned = await host.spawner.spawn(module_hash)
            try:
                art = await host.registry.artifact(module_hash) or {}
            except BaseException:
                await host.spawner.discard_spawned(spawned)
                raise
            v = Version.of(spawned, module_hash, source_sha256=art.get("source_sha256", ""),
                           build_key=art.get("build_key", ""), state=VersionState.PINNED)
            self.pinned[module_hash] = v
            host.by_worker[v.worker_id] = v
            log.info("loaded %s %s for jobs pinned to it", v.name, module_hash[:12])
            return v

    def job_finished(self, module_hash: str) -> None:
        """A job of module_hash ended: a pinned-only version with no work left goes away."""
        v = self.pinned.get(module_hash)
        if v is None or v.state != VersionState.PINNED:
            return

        async def maybe_retire() -> None:
            if await self.host.jobs.pending_for(v):
                return
            if self.pinned.get(module_hash) is v:
                del self.pinned[module_hash]
                self.host.retire(v)

        asyncio.create_task(maybe_retire())

    def forget(self, v: Version) -> None:
        if self.pinned.get(v.module_hash) is v:
            del self.pinned[v.module_hash]
