"""The retention sweep of finished jobs' events, on a real jobs.db: bounded
work per transaction, only expired finished jobs touched, and an old
jobs.db (without the expiry column) migrated in place."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

from api.jobs.service import RETENTION_BATCH, JobLimits, JobService
from api.jobs.store import JOB_COLUMNS, Store, add_event
from api.settings import Settings

DAY = 86400.0


def _job(conn: sqlite3.Connection, job_uuid: str, state: str, updated_at: float, events: int) -> None:
    row = (job_uuid, "m", "j", "h" * 64, state, "{}", None, None, 1, 1, 60.0, 0, updated_at, None, None, None,
           updated_at, updated_at, int(updated_at * 1000))
    conn.execute(f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({','.join('?' * 19)})", row)
    for i in range(events):
        add_event(conn, job_uuid, "progress", f'{{"i": {i}}}', updated_at)


def _events(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT job_uuid, COUNT(*) FROM job_events GROUP BY job_uuid").fetchall())


async def _sweep(path: Path, now: float) -> list[tuple[int, bool]]:
    store = Store(str(path))
    await store.open()
    try:
        service = JobService(store, SimpleNamespace(), limits=dataclasses.replace(JobLimits.from_settings(Settings()), event_retention_s=DAY))  # type: ignore[arg-type]
        steps = [await service.expire_events(now)]
        while steps[-1][1]:
            steps.append(await service.expire_events(now))
        return steps
    finally:
        await store.close()


def test_the_sweep_deletes_only_expired_finished_jobs_events_in_bounded_batches(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    now = time.time()

    async def seed() -> None:
        store = Store(str(path))
        await store.open()

        def fill(conn: sqlite3.Connection) -> None:
            _job(conn, "old-big", "done", now - 3 * DAY, 4500)
            _job(conn, "old-failed", "failed", now - 2 * DAY, 3)
            _job(conn, "old-canceled", "canceled", now - 2 * DAY, 1)
            _job(conn, "old-running", "running", now - 5 * DAY, 7)
            _job(conn, "old-pending", "pending", now - 9 * DAY, 1)
            _job(conn, "recent", "done", now - 60, 5)

        await store.write(fill)
        await store.close()

    asyncio.run(seed())
    steps = asyncio.run(_sweep(path, now))
    assert all(n <= RETENTION_BATCH for n, _ in steps)
    assert sum(n for n, _ in steps) == 4500 + 3 + 1
    assert steps[0] == (RETENTION_BATCH, True)
    assert _events(path) == {"old-running": 7, "old-pending": 1, "recent": 5}
    with sqlite3.connect(path) as conn:
        expired = dict(conn.execute("SELECT job_uuid, events_expired FROM jobs").fetchall())
        # The jobs themselves stay; the swept ones are marked and never looked at again.
        assert expired == {"old-big": 1, "old-failed": 1, "old-canceled": 1, "old-running": 0, "old-pending": 0, "recent": 0}
    assert asyncio.run(_sweep(path, now)) == [(0, False)]


def test_a_jobs_db_without_the_expiry_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        # The schema as earlier versions created it.
        conn.executescript(
            "CREATE TABLE jobs (job_uuid TEXT PRIMARY KEY, module TEXT NOT NULL, job TEXT NOT NULL, module_hash TEXT NOT NULL, "
            "state TEXT NOT NULL, payload TEXT NOT NULL, result TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, "
            "max_attempts INTEGER NOT NULL DEFAULT 1, timeout_s REAL NOT NULL, priority INTEGER NOT NULL DEFAULT 0, "
            "run_after REAL NOT NULL, lease_owner TEXT, lease_until REAL, idempotency_key TEXT UNIQUE, "
            "created_at REAL NOT NULL, updated_at REAL NOT NULL, seq INTEGER NOT NULL);"
            "CREATE TABLE job_events (event_id INTEGER PRIMARY KEY AUTOINCREMENT, job_uuid TEXT NOT NULL, ts REAL NOT NULL, "
            "type TEXT NOT NULL, data TEXT NOT NULL);"
        )
        _job(conn, "legacy", "done", time.time() - 2 * DAY, 2)
    steps = asyncio.run(_sweep(path, time.time()))
    assert sum(n for n, _ in steps) == 2
    assert _events(path) == {}
