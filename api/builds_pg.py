"""Builds of every node in PostgreSQL (docs/CLUSTER.md "Shared state in PostgreSQL").

Each node's farm (builder/farm.py) keeps its builds in memory and streams
their logs live; with a database, every state change of a build is also
written to the `builds` table, so GET /builds on any node lists the builds
of every node, and answers for a build another node ran.

Writes never block or fail a build: the farm's `on_change` observer only
puts a snapshot on a bounded queue, and one writer task applies them in
order (a later state never lands before an earlier one). A database that is
down loses those rows; the build itself goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from builder import limits
from builder.farm import Build

log = logging.getLogger("cweb.builds")

SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    node TEXT NOT NULL,
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    client TEXT NOT NULL,
    filename TEXT NOT NULL,
    state TEXT NOT NULL,
    builder TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    joined INTEGER NOT NULL DEFAULT 0,
    queued_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    queue_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
    compile_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
    cache_hit BOOLEAN NOT NULL DEFAULT FALSE,
    module_hash TEXT,
    error TEXT,
    message TEXT,
    log TEXT[] NOT NULL DEFAULT '{}',
    -- Ids are chosen per node (a client may name its build): unique per node only.
    PRIMARY KEY (node, id)
);
CREATE INDEX IF NOT EXISTS builds_queued_at ON builds (queued_at DESC);
CREATE INDEX IF NOT EXISTS builds_id ON builds (id);
"""

UPSERT = """
INSERT INTO builds (node, id, key, client, filename, state, builder, attempts, joined, queued_at,
                    started_at, finished_at, queue_ms, compile_ms, cache_hit, module_hash, error, message, log)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
ON CONFLICT (node, id) DO UPDATE SET
    key = EXCLUDED.key, state = EXCLUDED.state, builder = EXCLUDED.builder, attempts = EXCLUDED.attempts,
    joined = EXCLUDED.joined, started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
    queue_ms = EXCLUDED.queue_ms, compile_ms = EXCLUDED.compile_ms, cache_hit = EXCLUDED.cache_hit,
    module_hash = EXCLUDED.module_hash, error = EXCLUDED.error, message = EXCLUDED.message, log = EXCLUDED.log
"""

COLUMNS = ("id, node, key, client, filename, state, builder, attempts, joined, queued_at, started_at, "
           "finished_at, queue_ms, compile_ms, cache_hit, module_hash, error, message")

# State changes waiting for the writer at most; beyond, new ones are dropped (and logged).
MAX_PENDING = 1000
# Rows kept per node: the same history the farm keeps in memory.
KEEP_PER_NODE = limits.BUILD_HISTORY
# Finished builds between two prunings of this node's old rows.
PRUNE_EVERY = 50


def summary(row: asyncpg.Record) -> dict:
    """A row as GET /builds/{id} shows a build (builder/farm.py Build.summary), plus its node."""
    key = row["key"]
    return {
        "id": row["id"], "state": row["state"], "file": row["filename"], "client": row["client"],
        "builder": row["builder"], "attempts": row["attempts"], "joined": row["joined"],
        "position": None, "queued_at": row["queued_at"], "started_at": row["started_at"],
        "finished_at": row["finished_at"], "queue_ms": round(row["queue_ms"], 2),
        "compile_ms": round(row["compile_ms"], 2), "cache_hit": row["cache_hit"],
        "build_key": key if len(key) == 64 else None, "module_hash": row["module_hash"],
        "error": row["error"], "message": row["message"], "node": row["node"],
    }


class PgBuilds:
    """The `builds` table: this node writes its builds, reads everyone's."""

    def __init__(self, db, node_id: str) -> None:  # type: ignore[no-untyped-def]
        self.db = db
        self.node_id = node_id
        self._pending: asyncio.Queue[tuple] = asyncio.Queue(MAX_PENDING)
        self._writer: asyncio.Task | None = None
        self._finished = 0

    async def open(self) -> None:
        await self.db.migrate("builds", SCHEMA)
        self._writer = asyncio.create_task(self._write())

    async def close(self, wait_s: float = 2.0) -> None:
        """Write what is pending (briefly), then stop."""
        if self._writer is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pending.join(), wait_s)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    # ---- writing (the farm's on_change observer) ----

    def record(self, b: Build) -> None:
        """A snapshot of the build now: the Build goes on changing after this returns."""
        error = (getattr(b.error, "code", "storage_error") if b.error else None)
        message = (getattr(b.error, "message", str(b.error)) if b.error else None)
        row = (self.node_id, b.id, b.key, b.client, b.filename, b.state, b.builder, b.attempts, b.joined,
               b.queued_at, b.started_at, b.finished_at, b.queue_ms, b.compile_ms, b.cache_hit,
               b.result.module_hash if b.result else None, error, message, list(b.log))
        try:
            self._pending.put_nowait(row)
        except asyncio.QueueFull:
            log.warning("build %s: %d build records wait for the database; this one is not recorded", b.id, MAX_PENDING)

    async def _write(self) -> None:
        while True:
            row = await self._pending.get()
            try:
                await self.db.pool.execute(UPSERT, *row)
                if row[11] is not None:
                    self._finished += 1
                    if self._finished % PRUNE_EVERY == 0:
                        await self._prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a down database loses the record, never the build
                log.warning("cannot record build %s (%s): %s", row[1], row[5], exc)
            finally:
                self._pending.task_done()

    async def _prune(self) -> None:
        await self.db.pool.execute(
            "DELETE FROM builds WHERE node = $1 AND finished_at IS NOT NULL AND queued_at < "
            "(SELECT queued_at FROM builds WHERE node = $1 ORDER BY queued_at DESC OFFSET $2 LIMIT 1)",
            self.node_id, KEEP_PER_NODE - 1)

    # ---- reading ----

    async def others(self, state: str | None, limit: int) -> list[dict]:
        """Builds of the other nodes, newest first."""
        rows = await self.db.pool.fetch(
            f"SELECT {COLUMNS} FROM builds WHERE node <> $1 AND ($2::text IS NULL OR state = $2) "
            "ORDER BY queued_at DESC LIMIT $3", self.node_id, state, limit)
        return [summary(r) for r in rows]

    async def find(self, build_id: str) -> tuple[dict, list[str]] | None:
        """Another node's build and its stored log lines (the newest of that id)."""
        row = await self.db.pool.fetchrow(
            f"SELECT {COLUMNS}, log FROM builds WHERE id = $1 AND node <> $2 ORDER BY queued_at DESC LIMIT 1",
            build_id, self.node_id)
        if row is None:
            return None
        return summary(row), list(row["log"] or ())
