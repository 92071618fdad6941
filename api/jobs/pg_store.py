"""The jobs database in PostgreSQL, shared by every node of a cluster.

Set CWEB_DATABASE_URL=postgresql://… and jobs and their events live in the
tables `jobs` and `job_events` of that database (api/pg.py), next to the
registry; every node's job service reads and writes them.

Every write is one statement: one round trip and one commit, its conditions
its fence (a start only from pending; an attempt's events, retry and outcome
only while the job runs that attempt under this process's lease), so two
nodes racing to start one job cannot both win, and a node that lost its
lease writes nothing more. Writes to one job run in the order they were
queued (its events keep their order, a start commits before what the
attempt writes), a run of queued events of one attempt as one statement;
writes to different jobs run side by side on the pool.

Leases: a running job's lease names its owner (this process) and runs out
LEASE_S after the last renewal; the job service renews the leases of the
attempts it runs. A job whose lease ran out is taken back by whichever node
sweeps first (`reclaim`, `FOR UPDATE SKIP LOCKED`): pending again with
attempts left, else failed. At start a node takes back at once what a
previous process on its own data dir left running (the owner's first part,
kept in <data-dir>/jobs-owner-key): that process is dead, no need to wait.

Notifications (sent at commit, so a receiver always finds what they name):
`cweb_jobs` when a job becomes pending (submitted, retried, taken back) or
is to be canceled where it runs; `cweb_job_events` when a job got events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from api.errors import InsufficientStorage, Unavailable
from api.jobs.backend import JobStore
from api.pg import Database

log = logging.getLogger("cweb.jobs")

JOBS_CHANNEL = "cweb_jobs"
EVENTS_CHANNEL = "cweb_job_events"

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
    timeout_s       DOUBLE PRECISION NOT NULL,
    priority        BIGINT NOT NULL DEFAULT 0,
    run_after       DOUBLE PRECISION NOT NULL,
    lease_owner     TEXT,
    lease_until     DOUBLE PRECISION,
    idempotency_key TEXT UNIQUE,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    seq             BIGINT NOT NULL,
    events_expired  BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_hash ON jobs(module_hash, state);
CREATE INDEX IF NOT EXISTS jobs_module ON jobs(module, seq);
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs(lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_expirable ON jobs(updated_at)
    WHERE NOT events_expired AND state IN ('done', 'failed', 'canceled');
CREATE TABLE IF NOT EXISTS job_events (
    event_id  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_uuid  TEXT NOT NULL,
    ts        DOUBLE PRECISION NOT NULL,
    type      TEXT NOT NULL,
    data      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_uuid, event_id);
"""

_JOB_KEYS = ("job_uuid", "module", "job", "module_hash", "state", "payload", "result", "error", "attempts",
             "max_attempts", "timeout_s", "priority", "run_after", "lease_owner", "lease_until", "idempotency_key",
             "created_at", "updated_at", "seq")
JOB_COLUMNS = ", ".join(_JOB_KEYS)
_INSERT_EVENT = "INSERT INTO job_events (job_uuid, ts, type, data) VALUES ($1, $2, $3, $4) RETURNING event_id"
_JOB_TYPES = {"attempts": "integer", "max_attempts": "integer", "timeout_s": "float8", "priority": "bigint",
              "run_after": "float8", "lease_until": "float8", "created_at": "float8", "updated_at": "float8",
              "seq": "bigint"}

# Writes are group-committed: the ops queued while the previous group was
# written go out together, a statement per kind of op for all the jobs that
# have one (arrays in, unnest in SQL), so a thousand submissions cost a few
# round trips and commits, not a thousand. Every statement's conditions are
# its fence: an UPDATE re-checks its WHERE on a row another writer changed
# meanwhile, and the events' FOR SHARE waits for such a writer. Notifications
# go out at the statement's commit.

# Column arrays of new jobs, then their `cweb_jobs` notices: (job_uuid, event
# id) of each one inserted; those whose idempotency key was taken are missing.
_INSERT = f"""
WITH r AS (
    SELECT * FROM unnest({', '.join(f'${i + 1}::{_JOB_TYPES.get(k, "text")}[]' for i, k in enumerate(_JOB_KEYS))},
                         ${len(_JOB_KEYS) + 1}::text[])
        WITH ORDINALITY AS r({JOB_COLUMNS}, notice, n)),
j AS (
    INSERT INTO jobs ({JOB_COLUMNS}) SELECT {JOB_COLUMNS} FROM r ORDER BY n
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING job_uuid, payload, created_at),
e AS (
    INSERT INTO job_events (job_uuid, ts, type, data) SELECT job_uuid, created_at, 'created', payload FROM j
    RETURNING job_uuid, event_id)
SELECT e.job_uuid, e.event_id, pg_notify('{JOBS_CHANNEL}', r.notice) FROM e JOIN r USING (job_uuid)
"""

# $1 jobs, $2 expected attempts (NULL: any), $3 now, $4 owner, $5 lease, $6 node: each job
# started (pending, and with the expected attempts), as it now is, with its `started` event.
_START = f"""
WITH r AS (SELECT * FROM unnest($1::text[], $2::integer[], $3::float8[]) AS r(job_uuid, expected, now)),
u AS (
    UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, lease_owner = $4, lease_until = r.now + $5,
                      updated_at = r.now
    FROM r WHERE j.job_uuid = r.job_uuid AND j.state = 'pending' AND (r.expected IS NULL OR j.attempts = r.expected)
    RETURNING {', '.join('j.' + k for k in _JOB_KEYS)}),
e AS (
    INSERT INTO job_events (job_uuid, ts, type, data)
    SELECT job_uuid, updated_at, 'started', format('{{"attempt": %s, "node": %s}}', attempts, to_json($6::text)) FROM u
    RETURNING job_uuid, event_id, data)
SELECT u.*, e.event_id, e.data AS event_data, pg_notify('{EVENTS_CHANNEL}', $4 || ' ' || u.job_uuid || ' ' || e.event_id)
FROM u JOIN e USING (job_uuid)
"""

# $1 job per event, $2 attempt, $3 ts, $4 type, $5 data, $6 the jobs, $7 owner: per job, the ids of
# its events (in their order), for the jobs still running that attempt under this owner's lease.
_EVENTS = f"""
WITH r AS (SELECT * FROM unnest($1::text[], $2::integer[], $3::float8[], $4::text[], $5::text[])
                  WITH ORDINALITY AS r(job_uuid, attempt, ts, type, data, n)),
ok AS (SELECT job_uuid, attempts FROM jobs WHERE job_uuid = ANY($6::text[]) AND state = 'running' AND lease_owner = $7
       FOR SHARE),
ins AS (
    INSERT INTO job_events (job_uuid, ts, type, data)
    SELECT r.job_uuid, r.ts, r.type, r.data FROM r JOIN ok ON ok.job_uuid = r.job_uuid AND ok.attempts = r.attempt
    ORDER BY r.n
    RETURNING job_uuid, event_id),
agg AS (SELECT job_uuid, array_agg(event_id ORDER BY event_id) AS ids, min(event_id) AS first FROM ins GROUP BY job_uuid)
SELECT job_uuid, ids, pg_notify('{EVENTS_CHANNEL}', $7 || ' ' || job_uuid || ' ' || first) FROM agg
"""

# $1 jobs, $2 final state, $3 result, $4 error, $5 now, $6 only_if_state, $7 attempt (NULL: any),
# $8 event data, $9 owner: (job, terminal event id) of each job that was in only_if_state (and that
# attempt). Only the lease's owner ends a running job.
_FINISH = f"""
WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[],
                                $7::integer[], $8::text[]) AS r(job_uuid, state, result, error, now, only_if, attempt, data)),
u AS (
    UPDATE jobs j SET state = r.state, result = r.result, error = r.error, lease_owner = NULL, lease_until = NULL,
                      updated_at = r.now
    FROM r WHERE j.job_uuid = r.job_uuid AND j.state = r.only_if AND (r.attempt IS NULL OR j.attempts = r.attempt)
                 AND (r.only_if <> 'running' OR j.lease_owner = $9)
    RETURNING j.job_uuid, r.state AS kind, r.now AS ts, r.data),
e AS (INSERT INTO job_events (job_uuid, ts, type, data) SELECT job_uuid, ts, kind, data FROM u RETURNING job_uuid, event_id)
SELECT job_uuid, event_id, pg_notify('{EVENTS_CHANNEL}', $9 || ' ' || job_uuid || ' ' || event_id) FROM e
"""

# $1 job, $2 run_after, $3 error, $4 now, $5 attempt, $6 owner, $7 event data: the `retry` event's id, or no row.
_RETRY = f"""
WITH u AS (
    UPDATE jobs SET state = 'pending', run_after = $2, lease_owner = NULL, lease_until = NULL, error = $3, updated_at = $4
    WHERE job_uuid = $1 AND attempts = $5 AND state = 'running' AND lease_owner = $6
    RETURNING job_uuid, module_hash, priority, seq),
e AS (INSERT INTO job_events (job_uuid, ts, type, data) SELECT job_uuid, $4, 'retry', $7 FROM u RETURNING event_id)
SELECT e.event_id, pg_notify('{EVENTS_CHANNEL}', $6 || ' ' || $1 || ' ' || e.event_id),
       pg_notify('{JOBS_CHANNEL}', json_build_object('o', $6::text, 'k', 'pending', 'j', u.job_uuid, 'h', u.module_hash,
                                                   'p', u.priority, 'r', $2::float8, 's', u.seq)::text)
FROM u, e
"""

# Seconds a running job's lease lasts past its last renewal (CWEB_JOB_LEASE_S).
DEFAULT_LEASE_S = 30.0
# Jobs taken back per transaction by a sweep: bounded work per commit.
RECLAIM_BATCH = 200
OWNER_KEY_FILE = "jobs-owner-key"


def _text(s: str | None) -> str | None:
    """PostgreSQL text holds no NUL character; a module's result may."""
    return s.replace("\x00", "\ufffd") if s is not None and "\x00" in s else s


@contextlib.asynccontextmanager
async def _answerable() -> AsyncIterator[None]:
    """A database that is away or full is a 503 / 507 to the client, not a 500."""
    try:
        yield
    except asyncpg.DiskFullError as exc:
        raise InsufficientStorage("no space left in the database to store the job; free space on the database server") from exc
    except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError) as exc:
        raise Unavailable(f"the jobs database is unavailable: {exc}", code="database_unavailable") from exc


@dataclass(slots=True)
class _Insert:
    row: list
    notice: str
    scoped_key: str | None


@dataclass(slots=True)
class _Start:
    expected: int | None
    now: float


@dataclass(slots=True)
class _Event:
    """A queued event of a running attempt."""

    attempt: int
    kind: str
    data: str
    ts: float


@dataclass(slots=True)
class _Events:
    """Consecutive queued events of one attempt of one job: written together."""

    attempt: int
    events: list[_Event]


@dataclass(slots=True)
class _Finish:
    state: str
    result: str | None
    error: str | None
    now: float
    only_if: str
    attempt: int | None
    data: str


def _notice(owner: str, job: dict) -> str:
    """The `cweb_jobs` message that a job is pending (api/jobs/service.py _on_remote_job)."""
    return json.dumps({"o": owner, "k": "pending", "j": job["job_uuid"], "h": job["module_hash"], "p": job["priority"],
                       "r": job["run_after"], "s": job["seq"]})


_BATCHED = (_Insert, _Start, _Events, _Finish)


def _job(row: asyncpg.Record) -> dict:
    return {k: row[k] for k in _JOB_KEYS}


def owner_key(data_dir: str) -> str:
    """This data dir's lasting name: every process on it owns leases under it."""
    path = os.path.join(data_dir, OWNER_KEY_FILE)
    try:
        with open(path) as f:
            key = f.read().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_hex(8)
    os.makedirs(data_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return key


# One queued write of one job: data of a kind written for many jobs at once,
# or a statement of its own run by fn(conn) (rare writes: retries).
Op = _Insert | _Start | _Event | _Events | _Finish | Callable[[asyncpg.Connection], Awaitable[Any]]


class PgJobStore(JobStore):
    """Jobs and job events in PostgreSQL (api/pg.py Database), for one or many nodes."""

    shared = True

    def __init__(self, db: Database, *, data_dir: str, instance: str, node_id: str = "",
                 lease_s: float = DEFAULT_LEASE_S) -> None:
        self.db = db
        self.data_dir = data_dir
        self.instance = instance
        self.node_id = node_id
        self.lease_s = lease_s
        self.key = ""
        self.owner = ""
        # (job_uuid, op, future) queued behind the group being written.
        self.queue: list[tuple[str, Op, asyncio.Future]] = []
        self.wakeup = asyncio.Event()
        self.writer: asyncio.Task | None = None
        self.writing = False
        self.on_job: Callable[[dict], None] | None = None
        self.on_events: Callable[[str, int], None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.db.pool is not None
        return self.db.pool

    async def open(self) -> None:
        self.key = await asyncio.to_thread(owner_key, self.data_dir)
        # <data-dir key>/<this process>@<node>: the key says which leases a
        # restart on this data dir may take back at once, the node is for people.
        self.owner = f"{self.key}/{self.instance}@{self.node_id}"
        await self.db.migrate("jobs", SCHEMA)
        self.db.listen(JOBS_CHANNEL, self._job_notice)
        self.db.listen(EVENTS_CHANNEL, self._events_notice)
        self.writer = asyncio.create_task(self._write_loop())

    async def close(self) -> None:
        # What was queued is written first (the last attempts' outcomes).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while (self.queue or self.writing) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.writer is not None:
            self.writer.cancel()

    def watch(self, on_job: Callable[[dict], None], on_events: Callable[[str, int], None],
              on_resync: Callable[[], Awaitable[None]]) -> None:
        self.on_job = on_job
        self.on_events = on_events
        self.db.on_relisten.append(on_resync)

    def _job_notice(self, payload: str) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if msg.get("o") != self.owner and self.on_job is not None:
            self.on_job(msg)

    def _events_notice(self, payload: str) -> None:
        origin, _, rest = payload.partition(" ")
        job_uuid, _, first = rest.partition(" ")
        if origin != self.owner and self.on_events is not None and first.isdigit():
            self.on_events(job_uuid, int(first))

    # ---- reads ---------------------------------------------------------------

    async def job(self, job_uuid: str) -> dict | None:
        async with _answerable():
            row = await self.pool.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_uuid = $1", job_uuid)
        return _job(row) if row is not None else None

    async def jobs(self, state: str | None, module: str | None, before_seq: int | None, limit: int) -> list[dict]:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE TRUE"
        params: list[Any] = []
        if state:
            params.append(state)
            sql += f" AND state = ${len(params)}"
        if module:
            params.append(module)
            sql += f" AND module = ${len(params)}"
        if before_seq is not None:
            params.append(before_seq)
            sql += f" AND seq < ${len(params)}"
        params.append(limit)
        sql += f" ORDER BY seq DESC LIMIT ${len(params)}"
        async with _answerable():
            return [_job(r) for r in await self.pool.fetch(sql, *params)]

    async def expired_leases(self, now: float) -> list[dict]:
        rows = await self.pool.fetch(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_until < $1", now)
        return [_job(r) for r in rows]

    async def pending(self, inline_payload_bytes: int) -> list[tuple]:
        rows = await self.pool.fetch(
            "SELECT job_uuid, module_hash, priority, run_after, seq, job, attempts, timeout_s, "
            "CASE WHEN length(payload) <= $1 THEN payload END FROM jobs WHERE state = 'pending'",
            inline_payload_bytes,
        )
        return [tuple(r) for r in rows]

    async def events_since(self, job_uuid: str, since: int, limit: int, max_bytes: int) -> list[dict]:
        # The byte cut happens in the database: a page of large events is never
        # all sent here only to be dropped.
        async with _answerable():
            rows = await self.pool.fetch(
                "SELECT event_id, ts, type, data FROM ("
                "  SELECT event_id, ts, type, data, sum(length(data)) OVER (ORDER BY event_id) - length(data) AS before FROM ("
                "    SELECT event_id, ts, type, data FROM job_events WHERE job_uuid = $1 AND event_id > $2"
                "    ORDER BY event_id LIMIT $3) page) sized "
                "WHERE before < $4 ORDER BY event_id",
                job_uuid, since, limit, max_bytes,
            )
        return [{"job_uuid": job_uuid, "event_id": r[0], "ts": r[1], "type": r[2], "data": r[3]} for r in rows]

    async def counts(self) -> list[tuple[str, int]]:
        return [tuple(r) for r in await self.pool.fetch("SELECT state, COUNT(*) FROM jobs GROUP BY state")]

    async def counts_by_module(self) -> list[tuple[str, str, int]]:
        return [tuple(r) for r in await self.pool.fetch("SELECT module, state, COUNT(*) FROM jobs GROUP BY module, state")]

    async def runs_of(self, module_hash: str, limit: int) -> list[dict]:
        rows = await self.pool.fetch(
            "SELECT job_uuid, module, job, state, created_at FROM jobs WHERE module_hash = $1 ORDER BY seq DESC LIMIT $2",
            module_hash, limit,
        )
        return [{"job_uuid": r[0], "module": r[1], "job": r[2], "state": r[3], "created_at": int(r[4])} for r in rows]

    # ---- writes ----------------------------------------------------------------

    async def insert(self, job: dict, scoped_key: str | None) -> tuple[dict, bool, dict | None]:
        op = _Insert([job[k] for k in _JOB_KEYS], _notice(self.owner, job), scoped_key)
        async with _answerable():
            return await self._enqueue(job["job_uuid"], op)

    def start_attempt(self, job_uuid: str, expected_attempts: int | None, owner: str, now: float) -> asyncio.Future:
        return self._enqueue(job_uuid, _Start(expected_attempts, now))

    def add_attempt_event(self, job_uuid: str, attempt: int, kind: str, data: str) -> asyncio.Future:
        return self._enqueue(job_uuid, _Event(attempt, kind, _text(data) or "", time.time()))

    async def retry_later(self, job_uuid: str, attempt: int, run_after: float, error: str, event_data: str) -> dict | None:
        async def retry(conn: asyncpg.Connection) -> dict | None:
            now = time.time()
            event_id = await conn.fetchval(_RETRY, job_uuid, run_after, _text(error), now, attempt, self.owner, event_data)
            if event_id is None:
                return None
            return {"job_uuid": job_uuid, "event_id": event_id, "ts": now, "type": "retry", "data": event_data}

        return await self._enqueue(job_uuid, retry)

    async def finish(self, job_uuid: str, attempt: int | None, state: str, *, result: str | None, error: str | None,
                     only_if_state: str, event_data: str, now: float) -> dict | None:
        return await self._enqueue(job_uuid, _Finish(state, _text(result), _text(error), now, only_if_state, attempt,
                                                     _text(event_data) or ""))

    async def renew(self, job_uuids: list[str], now: float) -> int:
        """Push the leases of these attempts of this process LEASE_S past now; how many were renewed."""
        if not job_uuids:
            return 0
        status = await self.pool.execute(
            "UPDATE jobs SET lease_until = $1 WHERE job_uuid = ANY($2::text[]) AND state = 'running' AND lease_owner = $3",
            now + self.lease_s, job_uuids, self.owner)
        return int(status.rsplit(" ", 1)[1])

    async def recover_running(self, now: float, retry_reason: str, failed_error: str) -> list[dict]:
        """At start: what earlier processes on this data dir left running, and
        every running job whose lease ran out; never a live node's jobs."""
        return await self._take_back(now, [], retry_reason, failed_error, self.key)

    async def reclaim(self, now: float, keep: list[str], retry_reason: str, failed_error: str) -> list[dict]:
        """Running jobs whose lease ran out (but those in keep): pending again
        with attempts left, else failed; their events."""
        return await self._take_back(now, keep, retry_reason, failed_error, None)

    async def _take_back(self, now: float, keep: list[str], retry_reason: str, failed_error: str,
                         key: str | None) -> list[dict]:
        events: list[dict] = []
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                # SKIP LOCKED: two nodes sweeping together split the work, and a
                # job whose owner is writing right now is looked at next time.
                rows = await conn.fetch(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' "
                    "AND (lease_until < $1 OR ($2::text IS NOT NULL AND starts_with(lease_owner, $2::text || '/'))) "
                    "AND lease_owner IS DISTINCT FROM $5 AND NOT (job_uuid = ANY($3::text[])) "
                    "ORDER BY lease_until LIMIT $4 FOR UPDATE SKIP LOCKED",
                    now, key, keep, RECLAIM_BATCH, self.owner)
                for row in rows:
                    job = _job(row)
                    if job["attempts"] < job["max_attempts"]:
                        await conn.execute(
                            "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_until = NULL, run_after = $2, "
                            "updated_at = $2 WHERE job_uuid = $1", job["job_uuid"], now)
                        job.update(state="pending", run_after=now)
                        ev = await self._event(conn, job["job_uuid"], "retry",
                                               json.dumps({"attempt": job["attempts"], "reason": retry_reason}))
                        await self._notify_pending(conn, job)
                    else:
                        await conn.execute(
                            "UPDATE jobs SET state = 'failed', error = $2, lease_owner = NULL, lease_until = NULL, "
                            "updated_at = $3 WHERE job_uuid = $1", job["job_uuid"], failed_error, now)
                        ev = await self._event(conn, job["job_uuid"], "failed", json.dumps(failed_error))
                    await self._notify_events(conn, job["job_uuid"], ev["event_id"])
                    events.append(ev)
            if len(rows) < RECLAIM_BATCH:
                return events

    async def expire_events(self, finished_before: float, max_jobs: int, max_events: int) -> tuple[int, bool]:
        deleted = 0
        async with self.pool.acquire() as conn, conn.transaction():
            jobs = await conn.fetch(
                "SELECT job_uuid FROM jobs WHERE NOT events_expired AND state IN ('done', 'failed', 'canceled') "
                "AND updated_at < $1 ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                finished_before, max_jobs)
            for (job_uuid,) in jobs:
                left = max_events - deleted
                status = await conn.execute(
                    "DELETE FROM job_events WHERE event_id IN "
                    "(SELECT event_id FROM job_events WHERE job_uuid = $1 ORDER BY event_id LIMIT $2)", job_uuid, left)
                n = int(status.rsplit(" ", 1)[1])
                deleted += n
                if n == left:
                    return deleted, True  # this job may have more: the next batch goes on with it
                await conn.execute("UPDATE jobs SET events_expired = TRUE WHERE job_uuid = $1", job_uuid)
        return deleted, len(jobs) == max_jobs

    # ---- group-committed writes ----------------------------------------------------

    def _enqueue(self, job_uuid: str, op: Op) -> asyncio.Future:
        """Queue op behind the job's earlier writes; the future gives its result after the commit."""
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((job_uuid, op, fut))
        self.wakeup.set()
        return fut

    async def _write_loop(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            batch, self.queue = self.queue, []
            if not batch:
                continue
            self.writing = True
            try:
                await self._write(batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not leave callers waiting
                log.exception("writing %d job ops failed", len(batch))
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            finally:
                self.writing = False

    async def _write(self, batch: list[tuple[str, Op, asyncio.Future]]) -> None:
        """Write a group of queued ops: in rounds, the first op of every job,
        then the second, and so on (a job's writes keep their order), each
        round a statement per kind of op, the kinds side by side."""
        per_job: dict[str, list[tuple[Op, list[asyncio.Future]]]] = {}
        for job_uuid, op, fut in batch:
            ops = per_job.setdefault(job_uuid, [])
            if isinstance(op, _Event):
                last = ops[-1][0] if ops else None
                if isinstance(last, _Events) and last.attempt == op.attempt:
                    last.events.append(op)
                    ops[-1][1].append(fut)
                    continue
                op = _Events(op.attempt, [op])
            ops.append((op, [fut]))
        depth = max(len(ops) for ops in per_job.values())
        for k in range(depth):
            kinds: dict[type, list[tuple[str, Any, list[asyncio.Future]]]] = {}
            for job_uuid, ops in per_job.items():
                if k < len(ops):
                    op, futs = ops[k]
                    kinds.setdefault(type(op) if type(op) in _BATCHED else object, []).append((job_uuid, op, futs))
            await asyncio.gather(*(self._write_kind(kind, items) for kind, items in kinds.items()))

    async def _write_kind(self, kind: type, items: list[tuple[str, Any, list[asyncio.Future]]]) -> None:
        if kind is object:
            await asyncio.gather(*(self._write_one(item) for item in items))
            return
        try:
            results = await self._write_many(kind, items)
        except Exception as exc:  # noqa: BLE001 - one bad op must not fail its neighbours: each on its own
            if len(items) == 1:
                for fut in items[0][2]:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            await asyncio.gather(*(self._write_kind(kind, [item]) for item in items))
            return
        for (_, _, futs), values in zip(items, results, strict=True):
            for fut, value in zip(futs, values, strict=True):
                if not fut.done():
                    fut.set_result(value)

    async def _write_one(self, item: tuple[str, Any, list[asyncio.Future]]) -> None:
        _, fn, (fut,) = item
        try:
            async with self.pool.acquire() as conn:
                value = await fn(conn)
        except Exception as exc:  # noqa: BLE001 - reported to that op's caller
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(value)

    async def _write_many(self, kind: type, items: list[tuple[str, Any, list[asyncio.Future]]]) -> list[list[Any]]:
        """One statement for these ops of one kind (of different jobs): per op, its futures' values."""
        jobs = [job_uuid for job_uuid, _, _ in items]
        ops = [op for _, op, _ in items]
        if kind is _Insert:
            columns = [list(col) for col in zip(*(op.row for op in ops), strict=True)]
            rows = await self.pool.fetch(_INSERT, *columns, [op.notice for op in ops])
            created = {r[0]: r[1] for r in rows}
            out = []
            for op in ops:
                job = dict(zip(_JOB_KEYS, op.row, strict=True))
                if job["job_uuid"] in created:
                    ev = {"job_uuid": job["job_uuid"], "event_id": created[job["job_uuid"]], "ts": job["created_at"],
                          "type": "created", "data": job["payload"]}
                    out.append([(job, True, ev)])
                    continue
                # The key is taken (perhaps by a submission that committed
                # meanwhile on another node): answer that job.
                existing = await self.pool.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = $1", op.scoped_key)
                if existing is None:
                    raise RuntimeError(f"job {job['job_uuid']} was neither inserted nor found by its key")
                out.append([(_job(existing), False, None)])
            return out
        if kind is _Start:
            rows = await self.pool.fetch(_START, jobs, [op.expected for op in ops], [op.now for op in ops],
                                         self.owner, self.lease_s, self.node_id)
            started = {r["job_uuid"]: r for r in rows}
            out = []
            for job_uuid in jobs:
                r = started.get(job_uuid)
                if r is None:
                    out.append([(None, None)])
                    continue
                job = _job(r)
                out.append([(job, {"job_uuid": job_uuid, "event_id": r["event_id"], "ts": job["updated_at"], "type": "started",
                                   "data": r["event_data"]})])
            return out
        if kind is _Events:
            flat = [(job_uuid, op.attempt, e) for job_uuid, op in zip(jobs, ops, strict=True) for e in op.events]
            rows = await self.pool.fetch(_EVENTS, [f[0] for f in flat], [f[1] for f in flat], [f[2].ts for f in flat],
                                         [f[2].kind for f in flat], [f[2].data for f in flat], jobs, self.owner)
            ids = {r[0]: r[1] for r in rows}
            out = []
            for job_uuid, op in zip(jobs, ops, strict=True):
                got = ids.get(job_uuid)
                if not got:
                    # A stale attempt (or one another node took back) adds nothing.
                    out.append([None] * len(op.events))
                    continue
                out.append([{"job_uuid": job_uuid, "event_id": event_id, "ts": e.ts, "type": e.kind, "data": e.data}
                            for event_id, e in zip(got, op.events, strict=True)])
            return out
        assert kind is _Finish
        rows = await self.pool.fetch(_FINISH, jobs, [op.state for op in ops], [op.result for op in ops],
                                     [op.error for op in ops], [op.now for op in ops], [op.only_if for op in ops],
                                     [op.attempt for op in ops], [op.data for op in ops], self.owner)
        ended = {r[0]: r[1] for r in rows}
        return [[{"job_uuid": job_uuid, "event_id": ended[job_uuid], "ts": op.now, "type": op.state, "data": op.data}
                 if job_uuid in ended else None] for job_uuid, op in zip(jobs, ops, strict=True)]

    async def _event(self, conn: asyncpg.Connection, job_uuid: str, kind: str, data: str, ts: float | None = None) -> dict:
        ts = time.time() if ts is None else ts
        data = _text(data) or ""
        event_id = await conn.fetchval(_INSERT_EVENT, job_uuid, ts, kind, data)
        return {"job_uuid": job_uuid, "event_id": event_id, "ts": ts, "type": kind, "data": data}

    async def _notify_pending(self, conn: asyncpg.Connection, job: dict) -> None:
        await conn.execute("SELECT pg_notify($1, $2)", JOBS_CHANNEL, _notice(self.owner, job))

    async def _notify_events(self, conn: asyncpg.Connection, job_uuid: str, first_event_id: int) -> None:
        await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, f"{self.owner} {job_uuid} {first_event_id}")

    async def notify_cancel(self, job_uuid: str) -> None:
        """Ask the node running job_uuid to cancel it."""
        await self.db.notify(JOBS_CHANNEL, json.dumps({"o": self.owner, "k": "cancel", "j": job_uuid}))

