"""What the job service (api/jobs/service.py) needs of a jobs database.

`api/jobs/store.py Store` implements it on SQLite (one file, group commit,
one process); `api/jobs/pg_store.py PgJobStore` on PostgreSQL, shared by
several nodes (`shared`: leases are renewed and taken back, other nodes'
jobs and events arrive through `watch`). The service holds no SQL.

Every write is one transaction and is durable when its await returns (or,
for the two methods that return a future, when the future resolves); writes
queued by one caller commit in the order they were queued."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable


class JobStore(ABC):
    # Several processes share the database: an attempt starts only once its
    # start is committed (another node may take the job first), leases are
    # renewed and taken back, and other nodes' jobs and events are watched.
    shared = False
    # Who this process is in lease_owner (a shared store names it at open()).
    owner = ""
    # Seconds a lease lasts past its renewal (shared stores).
    lease_s = 0.0

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    # ---- reads -------------------------------------------------------------

    @abstractmethod
    async def job(self, job_uuid: str) -> dict | None:
        """One job, or None."""

    @abstractmethod
    async def jobs(self, state: str | None, module: str | None, before_seq: int | None, limit: int) -> list[dict]:
        """Jobs newest first (by seq), filtered by state and module, older than before_seq."""

    @abstractmethod
    async def expired_leases(self, now: float) -> list[dict]:
        """Running jobs whose lease ran out before now."""

    @abstractmethod
    async def pending(self, inline_payload_bytes: int) -> list[tuple]:
        """Every pending job as (job_uuid, module_hash, priority, run_after, seq,
        job, attempts, timeout_s, payload); payload only up to inline_payload_bytes, else None."""

    @abstractmethod
    async def events_since(self, job_uuid: str, since: int, limit: int, max_bytes: int) -> list[dict]:
        """Stored events after `since`, oldest first: up to limit, and no more
        once their data passed max_bytes (always at least one)."""

    @abstractmethod
    async def counts(self) -> list[tuple[str, int]]:
        """(state, jobs) for every state that has any."""

    @abstractmethod
    async def counts_by_module(self) -> list[tuple[str, str, int]]:
        """(module, state, jobs) for every pair that has any."""

    @abstractmethod
    async def runs_of(self, module_hash: str, limit: int) -> list[dict]:
        """The latest jobs of this artifact, newest first."""

    # ---- writes ------------------------------------------------------------

    @abstractmethod
    async def insert(self, job: dict, scoped_key: str | None) -> tuple[dict, bool, dict | None]:
        """A new pending job and its `created` event: (job, True, event); with
        scoped_key already taken: (that job, False, None)."""

    @abstractmethod
    def start_attempt(self, job_uuid: str, expected_attempts: int | None, owner: str, now: float) -> asyncio.Future:
        """Queue, without waiting, pending -> running under owner's lease with a
        `started` event; the future gives (job, event) or (None, None)."""

    @abstractmethod
    def add_attempt_event(self, job_uuid: str, attempt: int, kind: str, data: str) -> asyncio.Future:
        """Queue, without waiting, an event of a running attempt; the future
        gives the event, or None when the job moved on from that attempt."""

    @abstractmethod
    async def retry_later(self, job_uuid: str, attempt: int, run_after: float, error: str, event_data: str) -> dict | None:
        """Running attempt -> pending from run_after, with a `retry` event; None if no longer in that attempt."""

    @abstractmethod
    async def finish(self, job_uuid: str, attempt: int | None, state: str, *, result: str | None, error: str | None,
                     only_if_state: str, event_data: str, now: float) -> dict | None:
        """-> a final state with its one terminal event, only from only_if_state (and that attempt); None otherwise."""

    @abstractmethod
    async def recover_running(self, now: float, retry_reason: str, failed_error: str) -> list[dict]:
        """Jobs left running by a stopped server: pending again with attempts left, else failed; their events."""

    @abstractmethod
    async def expire_events(self, finished_before: float, max_jobs: int, max_events: int) -> tuple[int, bool]:
        """Delete up to max_events events of jobs finished before finished_before: (deleted, more may be left)."""

    # ---- several processes on one database (shared stores only) ---------------

    def watch(self, on_job: Callable[[dict], None], on_events: Callable[[str, int], None],
              on_resync: Callable[[], Awaitable[None]]) -> None:
        """Call on_job(message) when another process made a job pending
        ({"k": "pending", "j", "h", "p", "r", "s"}) or asks for a cancel
        ({"k": "cancel", "j"}), on_events(job_uuid, first_event_id) when it
        stored events, on_resync() when notifications may have been missed."""
        return None

    async def renew(self, job_uuids: list[str], now: float) -> int:
        """Extend this process's leases of these running jobs; how many."""
        return 0

    async def reclaim(self, now: float, keep: list[str], retry_reason: str, failed_error: str) -> list[dict]:
        """Running jobs whose lease ran out (but those in keep): pending again
        with attempts left, else failed; their events."""
        return []

    async def notify_cancel(self, job_uuid: str) -> None:
        """Ask the process running job_uuid to cancel it."""
        return None
