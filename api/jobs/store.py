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
import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from api.jobs.backend import JobStore

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


class Store(JobStore):
    """jobs.db (SQLite): one writer thread with group commit, one reader thread."""

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

    # ---- the jobs service's queries (api/jobs/service.py holds no SQL) ---------
    #
    # Each is one transaction (writes: one savepoint of a group commit) and
    # says what it does, not how: another database (PostgreSQL, issue 14)
    # implements these methods and the service stays as it is.

    async def job(self, job_uuid: str) -> dict | None:
        # fetchall, not fetchone: no statement is left open to pin an old snapshot.
        rows = await self.read(lambda c: c.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_uuid = ?", (job_uuid,)).fetchall())
        return row_to_job(rows[0]) if rows else None

    async def jobs(self, state: str | None, module: str | None, before_seq: int | None, limit: int) -> list[dict]:
        """Jobs newest first (by seq), filtered by state and module, older than before_seq."""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE 1=1"
        params: list[Any] = []
        if state:
            sql += " AND state = ?"
            params.append(state)
        if module:
            sql += " AND module = ?"
            params.append(module)
        if before_seq is not None:
            sql += " AND seq < ?"
            params.append(before_seq)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        rows = await self.read(lambda c: c.execute(sql, params).fetchall())
        return [row_to_job(r) for r in rows]

    async def expired_leases(self, now: float) -> list[dict]:
        """Running jobs whose lease ran out before now."""
        rows = await self.read(
            lambda c: c.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state='running' AND lease_until < ?", (now,)).fetchall()
        )
        return [row_to_job(r) for r in rows]

    async def pending(self, inline_payload_bytes: int) -> list[tuple]:
        """Every pending job as (job_uuid, module_hash, priority, run_after, seq,
        job, attempts, timeout_s, payload); payload only up to inline_payload_bytes, else None."""
        return await self.read(
            lambda c: c.execute(
                "SELECT job_uuid, module_hash, priority, run_after, seq, job, attempts, timeout_s, "
                "CASE WHEN length(payload) <= ? THEN payload END FROM jobs WHERE state='pending'",
                (inline_payload_bytes,),
            ).fetchall()
        )

    async def events_since(self, job_uuid: str, since: int, limit: int, max_bytes: int) -> list[dict]:
        """Stored events after `since`, oldest first: up to limit of them, and
        no more once their data passed max_bytes (always at least one)."""

        def read(c: sqlite3.Connection) -> list[tuple]:
            rows, size = [], 0
            # Row by row: a page of large events is cut before it is all in memory.
            for row in c.execute(
                "SELECT event_id, ts, type, data FROM job_events WHERE job_uuid = ? AND event_id > ? ORDER BY event_id LIMIT ?",
                (job_uuid, since, limit),
            ):
                rows.append(row)
                size += len(row[3])
                if size >= max_bytes:
                    break
            return rows

        rows = await self.read(read)
        return [{"job_uuid": job_uuid, "event_id": r[0], "ts": r[1], "type": r[2], "data": r[3]} for r in rows]

    async def counts(self) -> list[tuple[str, int]]:
        """(state, jobs) for every state that has any."""
        return await self.read(lambda c: c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())

    async def counts_by_module(self) -> list[tuple[str, str, int]]:
        """(module, state, jobs) for every pair that has any."""
        return await self.read(lambda c: c.execute("SELECT module, state, COUNT(*) FROM jobs GROUP BY module, state").fetchall())

    async def runs_of(self, module_hash: str, limit: int) -> list[dict]:
        """The latest jobs that ran (or are to run) on this artifact, newest first."""
        def runs(conn: sqlite3.Connection) -> list[dict]:
            rows = conn.execute(
                "SELECT job_uuid, module, job, state, created_at FROM jobs WHERE module_hash = ? ORDER BY seq DESC LIMIT ?",
                (module_hash, limit),
            ).fetchall()
            return [{"job_uuid": r[0], "module": r[1], "job": r[2], "state": r[3], "created_at": int(r[4])} for r in rows]

        return await self.read(runs)

    async def insert(self, job: dict, scoped_key: str | None) -> tuple[dict, bool, dict | None]:
        """Store a new pending job with its `created` event: (job, True, event).
        With scoped_key and a job already holding it: (that job, False, None)."""
        row = tuple(job[k] for k in _JOB_KEYS)

        def insert(conn: sqlite3.Connection) -> tuple[dict, bool, dict | None]:
            if scoped_key is not None:
                existing = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?", (scoped_key,)).fetchone()
                if existing is not None:
                    return row_to_job(existing), False, None
            conn.execute(f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({','.join('?' * len(_JOB_KEYS))})", row)
            ev = add_event(conn, job["job_uuid"], "created", job["payload"], job["created_at"])
            return row_to_job(row), True, ev

        return await self.write(insert)

    def start_attempt(self, job_uuid: str, expected_attempts: int | None, owner: str, now: float) -> asyncio.Future:
        """Queue (without waiting) the start of the job's next attempt: pending
        -> running under owner's lease, with a `started` event. The future gives
        (job, event), or (None, None) when the job is gone, not pending, or
        another attempt came first (its attempts differ from expected_attempts)."""

        def start(conn: sqlite3.Connection) -> tuple[dict | None, dict | None]:
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_uuid = ?", (job_uuid,)).fetchone()
            if row is None:
                return None, None
            job = row_to_job(row)
            if job["state"] != "pending" or (expected_attempts is not None and job["attempts"] != expected_attempts):
                return None, None
            attempt = job["attempts"] + 1
            conn.execute(
                "UPDATE jobs SET state='running', attempts=?, lease_owner=?, lease_until=?, updated_at=? WHERE job_uuid=? AND state='pending'",
                (attempt, owner, now + job["timeout_s"], now, job_uuid),
            )
            job.update(state="running", attempts=attempt)
            return job, add_event(conn, job_uuid, "started", json.dumps({"attempt": attempt}), now)

        return self.enqueue(start)

    def add_attempt_event(self, job_uuid: str, attempt: int, kind: str, data: str) -> asyncio.Future:
        """Queue (without waiting) an event of a running attempt; the future
        gives the event, or None when the job moved on from that attempt."""

        def write(conn: sqlite3.Connection) -> dict | None:
            # A stale attempt may not add events to a job that moved on.
            ok = conn.execute("SELECT 1 FROM jobs WHERE job_uuid=? AND attempts=? AND state='running'", (job_uuid, attempt)).fetchone()
            return add_event(conn, job_uuid, kind, data) if ok else None

        return self.enqueue(write)

    async def retry_later(self, job_uuid: str, attempt: int, run_after: float, error: str, event_data: str) -> dict | None:
        """Running attempt `attempt` -> pending again from run_after, with a
        `retry` event; None when the job is no longer in that attempt."""

        def retry(conn: sqlite3.Connection) -> dict | None:
            cur = conn.execute(
                "UPDATE jobs SET state='pending', run_after=?, lease_owner=NULL, lease_until=NULL, error=?, updated_at=? "
                "WHERE job_uuid=? AND attempts=? AND state='running'",
                (run_after, error, time.time(), job_uuid, attempt),
            )
            if cur.rowcount != 1:
                return None
            return add_event(conn, job_uuid, "retry", event_data)

        return await self.write(retry)

    async def finish(self, job_uuid: str, attempt: int | None, state: str, *, result: str | None, error: str | None,
                     only_if_state: str, event_data: str, now: float) -> dict | None:
        """The job -> a final state, with its one terminal event, only while it
        is in only_if_state (and in that attempt, when given); None otherwise."""

        def final(conn: sqlite3.Connection) -> dict | None:
            sql = "UPDATE jobs SET state=?, result=?, error=?, lease_owner=NULL, lease_until=NULL, updated_at=? WHERE job_uuid=? AND state=?"
            params: list[Any] = [state, result, error, now, job_uuid, only_if_state]
            if attempt is not None:
                sql += " AND attempts=?"
                params.append(attempt)
            if conn.execute(sql, params).rowcount != 1:
                return None
            return add_event(conn, job_uuid, state, event_data, now)

        return await self.write(final)

    async def recover_running(self, now: float, retry_reason: str, failed_error: str) -> list[dict]:
        """Jobs left running by a server that stopped: pending again when they
        have attempts left (a `retry` event), else failed (a `failed` event).
        Returns the events."""

        def fix(conn: sqlite3.Connection) -> list[dict]:
            events = []
            rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running'").fetchall()
            for row in rows:
                job = row_to_job(row)
                if job["attempts"] < job["max_attempts"]:
                    conn.execute(
                        "UPDATE jobs SET state='pending', lease_owner=NULL, lease_until=NULL, run_after=?, updated_at=? WHERE job_uuid=?",
                        (now, now, job["job_uuid"]),
                    )
                    events.append(add_event(conn, job["job_uuid"], "retry", json.dumps({"attempt": job["attempts"], "reason": retry_reason})))
                else:
                    conn.execute(
                        "UPDATE jobs SET state='failed', error=?, lease_owner=NULL, lease_until=NULL, updated_at=? WHERE job_uuid=?",
                        (failed_error, now, job["job_uuid"]),
                    )
                    events.append(add_event(conn, job["job_uuid"], "failed", json.dumps(failed_error)))
            return events

        return await self.write(fix)

    async def expire_events(self, finished_before: float, max_jobs: int, max_events: int) -> tuple[int, bool]:
        """Delete up to max_events events of jobs that finished before
        finished_before, oldest job first, in one transaction; (how many went,
        whether more may be left).

        Jobs come from a partial index of finished jobs whose events are not
        yet expired, and are marked once emptied, so each sweep touches only
        what it deletes: never a scan of events or jobs that stay."""

        def delete(conn: sqlite3.Connection) -> tuple[int, bool]:
            deleted = 0
            jobs = conn.execute(
                "SELECT job_uuid FROM jobs WHERE events_expired = 0 AND state IN ('done', 'failed', 'canceled') "
                "AND updated_at < ? ORDER BY updated_at LIMIT ?",
                (finished_before, max_jobs),
            ).fetchall()
            for (job_uuid,) in jobs:
                left = max_events - deleted
                n = conn.execute(
                    "DELETE FROM job_events WHERE event_id IN (SELECT event_id FROM job_events WHERE job_uuid = ? LIMIT ?)",
                    (job_uuid, left),
                ).rowcount
                deleted += n
                if n == left:
                    return deleted, True  # this job may have more: the next batch goes on with it
                conn.execute("UPDATE jobs SET events_expired = 1 WHERE job_uuid = ?", (job_uuid,))
            return deleted, len(jobs) == max_jobs

        return await self.write(delete)

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
