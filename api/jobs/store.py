"""The jobs database: <data-dir>/jobs.db, written only by the api process.

Writes are group-committed: every caller hands a small function to
`Store.write()`, a single writer thread runs all functions queued at that
moment inside one transaction (each in its own savepoint, so one failing
op does not undo its neighbours) and commits once. A caller's await returns
only after the commit, so "committed before acknowledged or sent" holds while
many concurrent submissions share one fsync.

Reads go through a second, query-only connection on its own thread: in WAL
mode they see every committed write and never wait behind a commit's fsync.

aiosqlite offers no way to run several statements as one unit on its thread;
the dedicated writer thread here is the same idea with batching added.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
from collections.abc import Callable
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_uuid        TEXT PRIMARY KEY,
    module          TEXT NOT NULL,
    job             TEXT NOT NULL,
    module_hash     TEXT NOT NULL,
    state           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    result          TEXT,
    error           TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL DEFAULT 1,
    timeout_s       REAL NOT NULL,
    priority        INTEGER NOT NULL DEFAULT 0,
    run_after       REAL NOT NULL,
    lease_owner     TEXT,
    lease_until     REAL,
    idempotency_key TEXT UNIQUE,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    seq             INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_hash ON jobs(module_hash, state);
CREATE TABLE IF NOT EXISTS job_events (
    event_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    job_uuid  TEXT NOT NULL,
    ts        REAL NOT NULL,
    type      TEXT NOT NULL,
    data      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_uuid, event_id);
"""

def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a jobs.db of an earlier version up to this schema (idempotent)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    if "events_expired" not in columns:
        # 1 once a finished job's events were deleted by the retention sweep.
        conn.execute("ALTER TABLE jobs ADD COLUMN events_expired INTEGER NOT NULL DEFAULT 0")
    # The finished jobs whose events the retention sweep has still to delete, oldest first.
    conn.execute(
        "CREATE INDEX IF NOT EXISTS jobs_expirable ON jobs(updated_at) "
        "WHERE events_expired = 0 AND state IN ('done', 'failed', 'canceled')"
    )


JOB_COLUMNS = (
    "job_uuid, module, job, module_hash, state, payload, result, error, attempts, max_attempts, "
    "timeout_s, priority, run_after, lease_owner, lease_until, idempotency_key, created_at, updated_at, seq"
)


_JOB_KEYS = tuple(c.strip() for c in JOB_COLUMNS.split(","))


def row_to_job(row: tuple) -> dict:
    return dict(zip(_JOB_KEYS, row, strict=True))


def add_event(conn: sqlite3.Connection, job_uuid: str, kind: str, data: str, ts: float | None = None) -> dict:
    """Insert one event (inside the caller's transaction) and return it."""
    ts = time.time() if ts is None else ts
    cur = conn.execute("INSERT INTO job_events (job_uuid, ts, type, data) VALUES (?, ?, ?, ?)", (job_uuid, ts, kind, data))
    return {"job_uuid": job_uuid, "event_id": cur.lastrowid, "ts": ts, "type": kind, "data": data}


class Store:
    """jobs.db: one writer thread with group commit, one reader thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cweb-jobs-db")
        self.read_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cweb-jobs-read")
        self.conn: sqlite3.Connection | None = None
        self.rconn: sqlite3.Connection | None = None
        self.queue: list[tuple[Callable, asyncio.Future]] = []
        self.wakeup = asyncio.Event()
        self.writer: asyncio.Task | None = None

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        _migrate(conn)
        self.conn = conn

    def _open_reader(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA query_only=1")
        self.rconn = conn

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._open)
        await loop.run_in_executor(self.read_executor, self._open_reader)
        self.writer = asyncio.create_task(self._write_loop())

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.read_executor, self._close_reader)
        await loop.run_in_executor(self.executor, self._close)
        self.read_executor.shutdown(wait=True)
        self.executor.shutdown(wait=True)

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def _close_reader(self) -> None:
        if self.rconn is not None:
            self.rconn.close()

    # ---- reads ---------------------------------------------------------------

    async def read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run fn on the read-only connection; it sees every write already acknowledged."""
        assert self.rconn is not None
        return await asyncio.get_running_loop().run_in_executor(self.read_executor, fn, self.rconn)

    async def runs_of(self, module_hash: str, limit: int) -> list[dict]:
        """The latest jobs that ran (or are to run) on this artifact, newest first."""
        def runs(conn: sqlite3.Connection) -> list[dict]:
            rows = conn.execute(
                "SELECT job_uuid, module, job, state, created_at FROM jobs WHERE module_hash = ? ORDER BY seq DESC LIMIT ?",
                (module_hash, limit),
            ).fetchall()
            return [{"job_uuid": r[0], "module": r[1], "job": r[2], "state": r[3], "created_at": int(r[4])} for r in rows]

        return await self.read(runs)

    # ---- group-committed writes ---------------------------------------------

    def enqueue(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future:
        """Queue fn now; the future resolves to its result after the commit.

        Writes run in the order they were queued, and their futures resolve in
        that order, so callers can rely on FIFO for both effects and wake-ups."""
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((fn, fut))
        self.wakeup.set()
        return fut

    async def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run fn in a transaction shared with other queued writes; return its result after commit."""
        return await self.enqueue(fn)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            batch, self.queue = self.queue, []
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self._run_batch, [fn for fn, _ in batch])
            except Exception as exc:  # noqa: BLE001 - the commit itself failed: every caller learns it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), (ok, value) in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _run_batch(self, fns: list[Callable]) -> list[tuple[bool, Any]]:
        conn = self.conn
        assert conn is not None
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for fn in fns:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((True, fn(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:  # noqa: BLE001 - reported to that op's caller only
                    if not conn.in_transaction:
                        # SQLite undid the whole transaction itself (a full disk,
                        # an I/O error): every op of the batch failed with it.
                        raise
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, exc))
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (a full disk) may have rolled back already: the
            # caller must see why it failed, not that nothing was left to undo.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results
