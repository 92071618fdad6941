"""Artifacts on this node's disk before the agent opens them.

The agent dlopens `<store_dir>/artifacts/<hash>.so` and checks its signed
manifest against the builder keys in `<store_dir>/builders/`: it never reads
the object store. With an object store configured (CWEB_S3_ENDPOINT), a node
that did not build an artifact fetches it first: `await artifacts.ensure(h)`
before every agent `load` (api/modules/spawner.py), and before a deploy swaps
on every node. The fetch runs in a thread (boto3 blocks), is verified by
builder/store.py Store.fetch_artifact (bytes against the hash, the manifest's
signature against its builder key) and written atomically; concurrent ensures
of one hash share a single fetch. Without an object store it is a no-op: the
store is local, or shared by mount, as on one machine.
"""

from __future__ import annotations

import asyncio
import logging
import time

from api.errors import BadGateway, NotFound, Unavailable
from api.settings import Settings
from builder.errors import ArtifactCorrupt, ArtifactMissing, ObjectStoreUnavailable
from builder.objects import ObjectStore
from builder.store import Store

log = logging.getLogger("cweb.api.artifacts")


def object_store(settings: Settings) -> ObjectStore | None:
    """The node's object store, None when CWEB_S3_ENDPOINT is unset."""
    return ObjectStore(settings.s3) if settings.s3.enabled else None


class Artifacts:
    """ensure(hash): the artifact, its manifest and its signer's key in the local store."""

    def __init__(self, store: Store | None = None) -> None:
        # None, or a Store without objects: nothing to fetch from anywhere.
        self.store = store if store is not None and store.objects is not None else None
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self.fetched = 0

    @property
    def remote(self) -> bool:
        return self.store is not None

    async def ensure(self, module_hash: str) -> None:
        """Return once the artifact is on local disk; raise an api error saying
        why it cannot be (missing everywhere 404, corrupt in the object store
        502, the object store unreachable 503). Nothing unverified is kept."""
        store = self.store
        if store is None or store.has_artifact(module_hash):
            return
        task = self._inflight.get(module_hash)
        if task is None:
            task = asyncio.ensure_future(self._fetch(store, module_hash))
            self._inflight[module_hash] = task
            task.add_done_callback(lambda t: self._done(module_hash, t))
        # Shielded: a caller that gives up does not cancel the others' fetch.
        await asyncio.shield(task)

    def _done(self, module_hash: str, task: asyncio.Future[None]) -> None:
        self._inflight.pop(module_hash, None)
        if not task.cancelled():
            task.exception()  # retrieved, even when every waiter was cancelled

    async def _fetch(self, store: Store, module_hash: str) -> None:
        started = time.perf_counter()
        short = module_hash[:12]
        try:
            fetched = await asyncio.to_thread(store.fetch_artifact, module_hash)
        except ArtifactCorrupt as exc:
            log.error("refused artifact %s from the object store: %s", short, exc.message)
            raise BadGateway(exc.message, code=exc.code) from exc
        except ArtifactMissing as exc:
            raise NotFound(exc.message, code=exc.code) from exc
        except ObjectStoreUnavailable as exc:
            raise Unavailable(exc.message, code=exc.code) from exc
        if fetched:
            self.fetched += 1
            log.info("fetched artifact %s from the object store in %.1f ms", short, (time.perf_counter() - started) * 1000)
