"""Running jobs: submission, dispatch to the pinned module version, retries,
timeouts, cancellation, recovery after a crash, and live event fan-out."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import random
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson

from api.errors import BadRequest, Conflict, Invalid, NotFound, Unavailable, disk_full_is_507
from api.jobs.backend import JobStore
from api.modules.version import VersionState
from api.settings import Settings
from runtime import protocol
from runtime.client import WorkerGone

if TYPE_CHECKING:
    from api.modules.host import ModuleHost
    from api.modules.version import Version

log = logging.getLogger("cweb.jobs")

# Versions whose worker may start a job (bound once: Enum member lookups are slow on 3.11).
_TAKES_JOBS = frozenset({VersionState.ACTIVE, VersionState.RETIRING, VersionState.PINNED})
_STOPPED = VersionState.STOPPED

DEFAULT_TIMEOUT_S = 600.0
MAX_ATTEMPTS_LIMIT = 20
CANCEL_GRACE_S = 5.0
# Seconds between repeats of a cancel request while the job runs (the frame
# can overtake the job's start; the module's hook still runs only once).
CANCEL_RESEND_S = 0.25
# Seconds a graceful shutdown waits for running attempts before leaving them to recovery.
STOP_GRACE_S = 5.0
# Seconds between sweeps for running jobs whose lease ran out with no attempt behind them.
LEASE_SWEEP_S = 30.0
# Seconds before finding a module version for jobs again after the runtime was unavailable.
LOAD_RETRY_S = 1.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 60.0
MAX_PAYLOAD_BYTES = 1 << 20
# delay_s / run_after beyond this many seconds from now are refused: a date
# that far is a mistake, and its epoch would not fit the answers' integers.
MAX_DELAY_S = 10 * 365 * 86400.0
# Bounds of integers stored in jobs.db (SQLite INTEGER) and taken from queries.
INT64_MAX = (1 << 63) - 1
# Finished jobs' events deleted per transaction by the retention sweep, and
# seconds between sweeps: bounded work per commit, however much expired.
RETENTION_BATCH = 2000
RETENTION_JOBS = 200
RETENTION_SWEEP_S = 60.0
# Stored events read per query when replaying a job's events.
REPLAY_PAGE = 500
# Event data per page read (GET /jobs/{id}/events, replays): pages of large
# events hold fewer of them.
PAGE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class JobLimits:
    """What one attempt of a job may store (settings CWEB_JOB_MAX_*)."""

    max_events: int
    max_event_bytes: int
    max_events_total_bytes: int
    max_result_bytes: int
    event_retention_s: float

    @classmethod
    def from_settings(cls, settings: Any) -> JobLimits:
        """The limits as configured; the defaults live in api/settings.py only."""
        return cls(settings.job_max_events, settings.job_max_event_bytes, settings.job_max_events_total_bytes,
                   settings.job_max_result_bytes, settings.job_event_retention_s)


class JobState(StrEnum):
    PENDING = "pending"
    """Accepted and waiting for its run_after time or a free job slot."""
    RUNNING = "running"
    """An attempt is executing in the worker of the job's module_hash."""
    DONE = "done"
    """Finished; `result` holds what the job set."""
    FAILED = "failed"
    """Gave up: the last attempt failed and none are left; `error` says why."""
    CANCELED = "canceled"
    """Canceled before it finished."""


TERMINAL = {JobState.DONE.value, JobState.FAILED.value, JobState.CANCELED.value}
# Event types only the server writes; a module emitting one gets "module_" prepended.
RESERVED_EVENTS = {"created", "started", "retry", "truncated"}


# Shared database (several nodes): a job made pending on another node is
# tried here this many seconds after its time, so the node that took the
# submission starts it when it has a free slot, and others take it when not.
REMOTE_CLAIM_DELAY_S = 0.05
# Seconds between looks at the database for pending jobs and subscribed
# jobs' events whose notification was missed (shared database).
RESYNC_S = 5.0

# Payloads up to this size stay in memory while their job waits, so an attempt
# can start without reading the job back from the database first.
INLINE_PAYLOAD_BYTES = 16 * 1024


@dataclass(slots=True)
class Spec:
    """What starting the next attempt of a queued job needs."""

    job: str
    attempts: int        # attempts made so far
    timeout_s: float
    payload: str | None  # None when larger than INLINE_PAYLOAD_BYTES: read at start


@dataclass(order=True)
class Queued:
    sort_key: tuple
    job_uuid: str = field(compare=False)
    spec: Spec | None = field(compare=False, default=None)


def _spec(job: dict) -> Spec:
    payload = job["payload"]
    return Spec(job["job"], job["attempts"], job["timeout_s"], payload if len(payload) <= INLINE_PAYLOAD_BYTES else None)


def _json_or_string(raw: bytes | str) -> Any:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        return json.loads(text)
    except ValueError:
        return text


def _as_json_text(text: str | None) -> str:
    """text if it is JSON, else text as a JSON string (event data is JSON)."""
    if text is None:
        return "null"
    try:
        json.loads(text)
    except ValueError:
        return json.dumps(text)
    return text


def public_job(job: dict) -> dict:
    """The wire shape of a job (c-web-modules' fields plus cweb's).

    Times are whole epoch seconds, as the original's: jansson's
    json_integer_value() reads a float as 0."""
    return {
        "job_uuid": job["job_uuid"],
        "module": job["module"],
        "job": job["job"],
        "state": job["state"],
        "module_hash": job["module_hash"],
        "created_at": int(job["created_at"]),
        "updated_at": int(job["updated_at"]),
        "result": _json_or_string(job["result"]) if job["result"] is not None else None,
        "error": job["error"],
        "attempts": job["attempts"],
        "max_attempts": job["max_attempts"],
        "priority": job["priority"],
        "run_after": int(job["run_after"]),
        "timeout_s": job["timeout_s"],
    }


def public_event(ev: dict) -> dict:
    return {"job_uuid": ev["job_uuid"], "event_id": ev["event_id"], "ts": int(ev["ts"]), "ts_ms": int(ev["ts"] * 1000), "type": ev["type"], "data": _json_or_string(ev["data"])}


class JobService:
    def __init__(self, store: JobStore, instance: str | None = None, limits: JobLimits | None = None) -> None:
        self.store = store
        # The module host the jobs run on, from start(); the host gets this
        # service at its construction (api/modules/pinning.JobDemand).
        self.host: ModuleHost = None  # type: ignore[assignment]
        self.limits = limits or JobLimits.from_settings(Settings())
        self.instance = instance or uuidlib.uuid4().hex
        self.queues: dict[str, list[Queued]] = {}     # module_hash -> heap of pending
        # job_uuid -> its live queue entry; heap entries not in here are stale (canceled).
        self.queued: dict[str, Queued] = {}
        self.running: dict[str, asyncio.Task] = {}  # job_uuid -> run task
        self.running_hash: dict[str, str] = {}        # job_uuid -> module_hash
        self.running_version: dict[str, Version] = {}  # job_uuid -> version its attempt runs on
        self.versions: dict[str, Version] = {}      # module_hash -> version last found for it
        self.loading: dict[str, asyncio.Task] = {}    # module_hash -> task finding its version
        self.busy: dict[str, int] = {}                # module_hash -> job slots in use
        self.slots: dict[str, str] = {}               # job_uuid -> module_hash whose slot it holds
        self.cancel_requested: set[str] = set()
        self.subscribers: dict[str, set[asyncio.Queue]] = {}
        self.seq = itertools.count(int(time.time() * 1000) * 1000)
        self.wake = asyncio.Event()
        self.dispatcher: asyncio.Task | None = None
        self.sweeper: asyncio.Task | None = None
        self.retention: asyncio.Task | None = None
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.finished = 0
        # Shared database: tasks that keep leases, look for missed work, and
        # bring other nodes' events of subscribed jobs (job_uuid -> last event id published).
        self.renewer: asyncio.Task | None = None
        self.resyncer: asyncio.Task | None = None
        self.remote_seen: dict[str, int] = {}
        self.remote_follow: dict[str, asyncio.Task] = {}
        self.remote_again: set[str] = set()

    # ---- startup -----------------------------------------------------------

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        if self.store.shared:
            self.instance = self.store.owner
            self.store.watch(self._on_remote_job, self._on_remote_events, self._resync)
        await self.recover()
        self.dispatcher = asyncio.create_task(self._dispatch_loop())
        self.sweeper = asyncio.create_task(self._sweep_leases())
        if self.store.shared:
            self.renewer = asyncio.create_task(self._renew_leases())
            self.resyncer = asyncio.create_task(self._resync_loop())
        if self.limits.event_retention_s > 0:
            self.retention = asyncio.create_task(self._sweep_retention())

    async def stop(self) -> None:
        """Start nothing new; give running attempts STOP_GRACE_S to finish. Whatever is
        still running then is left `running` for recovery at the next start."""
        for task in (self.dispatcher, self.sweeper, self.retention, self.resyncer, *self.remote_follow.values()):
            if task is not None:
                task.cancel()
        for task in list(self.loading.values()):
            task.cancel()
        for t in self.timers.values():
            t.cancel()
        running = list(self.running.values())
        if running:
            await asyncio.wait(running, timeout=STOP_GRACE_S)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self.renewer is not None:
            self.renewer.cancel()

    async def _sweep_leases(self) -> None:
        """Fail or re-queue running jobs whose lease expired with no attempt of this process behind them.

        Worker deaths and restarts are handled where they happen; this is the
        backstop that keeps a job from staying `running` through any other path."""
        every = min(LEASE_SWEEP_S, self.store.lease_s / 2) if self.store.shared else LEASE_SWEEP_S
        while True:
            await asyncio.sleep(every)
            try:
                now = time.time()
                if self.store.shared:
                    # Another node's lease ran out: that node is gone or cut off; run its job here.
                    events = await self.store.reclaim(now, list(self.running), "the node running it stopped renewing its lease",
                                                      "interrupted: the node running it stopped during the last attempt")
                    await self._taken_back(events)
                    continue
                for job in await self.store.expired_leases(now):
                    if job["job_uuid"] not in self.running:
                        log.warning("job %s outlived its lease with no attempt running; recovering it", job["job_uuid"])
                        await self._retry_or_fail(job, job["attempts"], "the job's lease expired with no attempt running")
            except Exception:  # noqa: BLE001 - the sweep must keep running
                log.exception("lease sweep failed")

    async def expire_events(self, now: float | None = None) -> tuple[int, bool]:
        """Delete up to RETENTION_BATCH events of jobs that finished more than
        the retention ago, oldest job first, in one transaction; (how many
        went, whether more may be left).

        Jobs come from a partial index of finished jobs whose events are not
        yet expired, and are marked once emptied, so each sweep touches only
        what it deletes: never a scan of events or jobs that stay."""
        cutoff = (time.time() if now is None else now) - self.limits.event_retention_s
        return await self.store.expire_events(cutoff, RETENTION_JOBS, RETENTION_BATCH)

    async def _sweep_retention(self) -> None:
        """Every RETENTION_SWEEP_S, delete expired events batch by batch: each
        batch is one short commit, so submissions never wait behind a sweep."""
        while True:
            try:
                while (await self.expire_events())[1]:
                    await asyncio.sleep(0)
            except Exception:  # noqa: BLE001 - the sweep must keep running (a full disk passes)
                log.exception("job event retention sweep failed")
            await asyncio.sleep(min(RETENTION_SWEEP_S, max(1.0, self.limits.event_retention_s)))

    async def recover(self) -> None:
        """Jobs left running by a dead server are retried or failed; pending ones are queued."""
        now = time.time()

        events = await self.store.recover_running(now, "server restarted", "interrupted: the server stopped during the last attempt")
        for ev in events:
            self._publish(ev)
        await self._enqueue_pending()

    async def _enqueue_pending(self, delay: float = 0.0) -> None:
        """Queue every pending job of the database this process does not hold yet."""
        rows = await self.store.pending(INLINE_PAYLOAD_BYTES)
        fresh = 0
        for job_uuid, module_hash, priority, run_after, seq, job, attempts, timeout_s, payload in rows:
            if job_uuid in self.queued or job_uuid in self.running:
                continue
            fresh += 1
            self._enqueue(job_uuid, module_hash, priority, run_after + delay, seq, Spec(job, attempts, timeout_s, payload))
        if fresh and not self.store.shared:
            log.info("recovered %d pending jobs", fresh)

    async def _taken_back(self, events: list[dict]) -> None:
        """Publish what recovery wrote, and queue the jobs it made pending again."""
        for ev in events:
            self._publish(ev)
            if ev["type"] == "retry" and ev["job_uuid"] not in self.running:
                job = await self.store.job(ev["job_uuid"])
                if job is not None and job["state"] == "pending":
                    self._enqueue(job["job_uuid"], job["module_hash"], job["priority"], job["run_after"], job["seq"], _spec(job))

    # ---- several nodes on one database -------------------------------------------

    async def _renew_leases(self) -> None:
        """Keep the leases of the attempts running here (a shared database)."""
        while True:
            await asyncio.sleep(self.store.lease_s / 3)
            try:
                if self.running:
                    await self.store.renew(list(self.running), time.time())
            except Exception:  # noqa: BLE001 - a database hiccup: the next round tries again
                log.exception("renewing job leases failed")

    def _on_remote_job(self, msg: dict) -> None:
        job_uuid = msg.get("j")
        if not isinstance(job_uuid, str):
            return
        if msg.get("k") == "cancel":
            if job_uuid in self.running:
                asyncio.get_running_loop().create_task(self._cancel_running(job_uuid))
            return
        if msg.get("k") != "pending" or job_uuid in self.running:
            return
        try:
            module_hash, priority, run_after, seq = str(msg["h"]), int(msg["p"]), float(msg["r"]), int(msg["s"])
        except (KeyError, TypeError, ValueError):
            return
        # No spec: the start reads the job back, and runs it only if it won the job.
        self._enqueue(job_uuid, module_hash, priority, max(run_after, time.time()) + REMOTE_CLAIM_DELAY_S, seq, None)

    def _on_remote_events(self, job_uuid: str, first_event_id: int) -> None:
        if job_uuid not in self.subscribers:
            return
        self.remote_seen.setdefault(job_uuid, first_event_id - 1)
        self._follow_remote(job_uuid)

    def _follow_remote(self, job_uuid: str) -> None:
        if job_uuid in self.remote_follow:
            self.remote_again.add(job_uuid)
            return
        self.remote_follow[job_uuid] = asyncio.get_running_loop().create_task(self._fetch_remote(job_uuid))

    async def _fetch_remote(self, job_uuid: str) -> None:
        """Publish another node's stored events of a subscribed job, in order, once each."""
        try:
            while job_uuid in self.subscribers:
                self.remote_again.discard(job_uuid)
                since = self.remote_seen.get(job_uuid, 0)
                page = await self.store.events_since(job_uuid, since, REPLAY_PAGE, PAGE_BYTES)
                for ev in page:
                    for q in self.subscribers.get(job_uuid, ()):
                        q.put_nowait(ev)
                if page:
                    self.remote_seen[job_uuid] = page[-1]["event_id"]
                if len(page) < REPLAY_PAGE and job_uuid not in self.remote_again:
                    return
        except Exception:  # noqa: BLE001 - the periodic resync tries again
            log.exception("reading events of job %s failed", job_uuid)
        finally:
            self.remote_follow.pop(job_uuid, None)
            self.remote_again.discard(job_uuid)

    async def _resync(self) -> None:
        """Catch up with what notifications may have missed: pending jobs, and
        events of subscribed jobs that run elsewhere."""
        await self._enqueue_pending(REMOTE_CLAIM_DELAY_S)
        for job_uuid in list(self.subscribers):
            if job_uuid != "*" and job_uuid not in self.running:
                self._follow_remote(job_uuid)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_S)
            try:
                await self._resync()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("jobs resync failed")

    # ---- submission -----------------------------------------------------------

    def module_for(self, job: str) -> str:
        """The one active module that declares a job of this name (POST /jobs
        without `module`): 404 when none does, 409 naming them when several do."""
        owners = sorted(name for name, v in self.host.active.items() if any(j["name"] == job for j in v.decl["jobs"]))
        if not owners:
            raise NotFound(f"no active module has a job {job!r}", code="job_not_found")
        if len(owners) > 1:
            raise Conflict(f"several modules have a job {job!r}: {', '.join(owners)}; name one in 'module'",
                           code="ambiguous_job", modules=owners)
        return owners[0]

    def _resolve(self, module: str, job: str) -> tuple[Version, int]:
        version = self.host.active.get(module)
        if version is None:
            raise NotFound(f"no module named {module!r}", code="module_not_found")
        if version.state == VersionState.QUARANTINED:
            raise Unavailable(f"module {module} is quarantined after repeated crashes; redeploy it",
                              code="quarantined", module=module, module_hash=version.module_hash)
        for j in version.decl["jobs"]:
            if j["name"] == job:
                return version, j["index"]
        raise NotFound(f"module {module!r} has no job {job!r}", code="job_not_found")

    async def submit(
        self,
        module: str,
        job: str,
        payload: Any,
        *,
        max_attempts: int = 1,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        priority: int = 0,
        delay_s: float = 0.0,
        run_after: float | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[dict, bool]:
        """Create a job pinned to the module's active hash. Returns (job, created)."""
        if not isinstance(payload, dict):
            raise Invalid("payload must be a JSON object", code="invalid_payload")
        if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise Invalid(f"max_attempts must be 1..{MAX_ATTEMPTS_LIMIT}", code="invalid_job")
        if not 0 < timeout_s <= 7 * 86400:
            raise Invalid("timeout_s must be > 0 and at most a week", code="invalid_job")
        if not -INT64_MAX <= priority <= INT64_MAX:
            raise Invalid("priority must fit in 64 bits", code="invalid_job")
        now = time.time()
        if delay_s > MAX_DELAY_S or (run_after is not None and not -MAX_DELAY_S < run_after - now <= MAX_DELAY_S):
            raise Invalid("delay_s / run_after must be within ten years of now", code="invalid_job")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
            raise BadRequest("Idempotency-Key must be 1-200 characters", code="invalid_idempotency_key")
        version, _ = self._resolve(module, job)
        try:
            payload_text = orjson.dumps(payload).decode()
        except TypeError:  # e.g. an integer beyond 64 bits, from jobs_create's parser
            payload_text = json.dumps(payload, separators=(",", ":"))
        if len(payload_text) > MAX_PAYLOAD_BYTES:
            raise Invalid(f"payload is larger than {MAX_PAYLOAD_BYTES} bytes", code="payload_too_large")
        when = run_after if run_after is not None else now + max(0.0, delay_s)
        job_uuid = str(uuidlib.uuid4())
        seq = next(self.seq)
        # A key names one submission of one job of one module: the same key
        # sent for another module or job is another submission (another job).
        scoped_key = None if idempotency_key is None else json.dumps([module, job, idempotency_key])
        record = {"job_uuid": job_uuid, "module": module, "job": job, "module_hash": version.module_hash, "state": "pending",
                  "payload": payload_text, "result": None, "error": None, "attempts": 0, "max_attempts": max_attempts,
                  "timeout_s": timeout_s, "priority": priority, "run_after": when, "lease_owner": None, "lease_until": None,
                  "idempotency_key": scoped_key, "created_at": now, "updated_at": now, "seq": seq}
        with disk_full_is_507("the job"):
            created_job, created, ev = await self.store.insert(record, scoped_key)
        if created:
            assert ev is not None
            self._publish(ev)
            self._enqueue(job_uuid, version.module_hash, priority, when, seq, _spec(created_job))
        return created_job, created

    # ---- queueing and dispatch ---------------------------------------------------

    def _enqueue(self, job_uuid: str, module_hash: str, priority: int, run_after: float, seq: int, spec: Spec | None) -> None:
        item = Queued((-priority, seq), job_uuid, spec)
        self.queued[job_uuid] = item
        delay = run_after - time.time()
        if delay > 0.001:
            loop = asyncio.get_running_loop()
            self.timers[job_uuid] = loop.call_later(delay, self._due, module_hash, item)
            return
        heapq.heappush(self.queues.setdefault(module_hash, []), item)
        self.wake.set()

    def _due(self, module_hash: str, item: Queued) -> None:
        self.timers.pop(item.job_uuid, None)
        if self.queued.get(item.job_uuid) is not item:
            return
        heapq.heappush(self.queues.setdefault(module_hash, []), item)
        self.wake.set()

    async def _dispatch_loop(self) -> None:
        """Start queued jobs, highest priority first, while their version has free job slots.

        Never waits for a version to load or restart: that happens in a task
        per module hash, which wakes the loop when the version is ready."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            for module_hash, heap in list(self.queues.items()):
                if not heap:
                    del self.queues[module_hash]
                    continue
                version = self._usable_version(module_hash)
                if version is None:
                    if module_hash not in self.loading:
                        self.loading[module_hash] = asyncio.create_task(self._load_version(module_hash))
                    continue
                assert version.jobs_pool is not None
                slots = version.jobs_pool.size - self.busy.get(module_hash, 0)
                while slots > 0 and heap:
                    item = heapq.heappop(heap)
                    if self.queued.get(item.job_uuid) is not item or item.job_uuid in self.running:
                        continue  # canceled while queued, or queued again since
                    del self.queued[item.job_uuid]
                    slots -= 1
                    self.busy[module_hash] = self.busy.get(module_hash, 0) + 1
                    self.slots[item.job_uuid] = module_hash
                    self.running_hash[item.job_uuid] = module_hash
                    self.running[item.job_uuid] = asyncio.create_task(self._run(item.job_uuid, module_hash, version, item.spec))
                if not heap:
                    del self.queues[module_hash]

    def _usable_version(self, module_hash: str) -> Version | None:
        """The version last found for module_hash, if it can still take jobs right now."""
        version = self.versions.get(module_hash)
        if version is None or version.state not in _TAKES_JOBS:
            if version is not None and version.state is _STOPPED:
                del self.versions[module_hash]  # let it be collected; a later job finds it again
            return None
        pool = version.jobs_pool
        if pool is None or pool.dead or version.module_hash != module_hash:
            return None
        return version

    async def _load_version(self, module_hash: str) -> None:
        """Find (or load) the worker for module_hash, then wake the dispatcher."""
        try:
            version = await self.host.version_for_hash(module_hash)
            if version is None or version.jobs_pool is None:
                raise LookupError("it is not loaded and defines no jobs")
            self.versions[module_hash] = version
        except asyncio.CancelledError:
            raise
        except (Unavailable, TimeoutError) as exc:
            # The runtime is away or the worker is slow to restart: keep the jobs, try again.
            log.warning("module version %s is unavailable for jobs (%s); retrying in %g s", module_hash[:12], exc, LOAD_RETRY_S)
            await asyncio.sleep(LOAD_RETRY_S)
        except Exception as exc:  # noqa: BLE001 - the artifact cannot run: fail its queued jobs
            log.warning("module version %s cannot run jobs: %s", module_hash[:12], exc)
            await self._fail_queue(module_hash, f"module version {module_hash[:12]} cannot be loaded: {exc}")
        finally:
            self.loading.pop(module_hash, None)
            self.wake.set()

    async def _fail_queue(self, module_hash: str, message: str) -> None:
        heap = self.queues.pop(module_hash, [])
        for item in heap:
            if self.queued.get(item.job_uuid) is not item:
                continue
            del self.queued[item.job_uuid]
            await self._finish(item.job_uuid, None, "failed", error=message, only_if_state="pending")

    async def pending_for(self, version: Version) -> bool:
        """Whether pending or running jobs still need this version's worker."""
        h = version.module_hash
        return bool(self.queues.get(h) or self.busy.get(h) or h in self.loading or h in self.running_hash.values())

    def _release_slot(self, job_uuid: str) -> None:
        """The job no longer occupies a job thread of its version: let the next one start.

        Called as soon as the worker answers, so the next job's start overlaps
        this one's final commit."""
        module_hash = self.slots.pop(job_uuid, None)
        if module_hash is None:
            return
        left = self.busy.get(module_hash, 1) - 1
        if left > 0:
            self.busy[module_hash] = left
        else:
            self.busy.pop(module_hash, None)
        self.wake.set()

    # ---- one attempt ------------------------------------------------------------------

    async def _run(self, job_uuid: str, module_hash: str, version: Version, spec: Spec | None) -> None:
        try:
            await self._attempt(job_uuid, module_hash, version, spec)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - never lose a job to a bug in here
            log.exception("job %s attempt crashed in the api", job_uuid)
            await self._finish(job_uuid, None, "failed", error="internal error while running the job")
        finally:
            self.running.pop(job_uuid, None)
            self.running_hash.pop(job_uuid, None)
            self.running_version.pop(job_uuid, None)
            self._release_slot(job_uuid)
            self.host.job_finished(module_hash)

    async def _attempt(self, job_uuid: str, module_hash: str, version: Version, spec: Spec | None) -> None:
        """One attempt: mark it running (committed, then `started` is published), run it in the
        worker of its version, then write its outcome conditionally on this attempt.

        When the queued job's spec is in memory, the job is sent to the worker
        while its start is being committed: the commit and the run overlap, and
        nothing the attempt produces (events, result) is written or sent
        before the start is committed."""
        now = time.time()
        expected = spec.attempts if spec is not None else None

        async def started(written: asyncio.Future) -> dict | None:
            job, ev = await written
            if ev is not None:
                self._publish(ev)
            return job

        # Queued now, before anything the attempt writes later (its events and
        # outcome), so `started` is committed and published before them.
        starting = asyncio.ensure_future(started(self.store.start_attempt(job_uuid, expected, self.instance, now)))
        self.running_version[job_uuid] = version
        # With a shared database another node may win the job: run it only once the start is ours.
        if spec is not None and spec.payload is not None and job_uuid not in self.cancel_requested and not self.store.shared:
            attempt, name, payload, timeout_s = spec.attempts + 1, spec.job, spec.payload, spec.timeout_s
        else:
            job = await starting
            if job is None:
                return
            attempt, name, payload, timeout_s = job["attempts"], job["job"], job["payload"], job["timeout_s"]
            if job_uuid in self.cancel_requested:
                # Canceled between the dispatch and the start: do not run it at all.
                self.cancel_requested.discard(job_uuid)
                await self._finish(job_uuid, attempt, "canceled")
                return
        index = next((j["index"] for j in version.decl["jobs"] if j["name"] == name), None)
        pool = version.jobs_pool
        if pool is None or index is None:
            if await starting is not None:
                await self._finish(job_uuid, attempt, "failed", error=f"job {name!r} is not available in {module_hash[:12]}")
            return

        # Writes commit in order, so waiting for the last event waits for all.
        pending_events: list[asyncio.Future] = []
        limits = self.limits
        # Events this attempt stored, their bytes, and whether it hit a cap:
        # past a cap its events are dropped, after one `truncated` event.
        stored = [0, 0, False]

        def store_event(kind: str, text: str) -> None:
            stored[0] += 1
            stored[1] += len(text)
            written = self.store.add_attempt_event(job_uuid, attempt, kind, text)
            written.add_done_callback(self._publish_written)
            pending_events[:] = [written]

        def sink(frame: bytes) -> None:
            if stored[2]:
                return
            kind, data = protocol.decode_job_event(frame)
            if stored[0] + 1 >= limits.max_events or stored[1] + min(len(data), limits.max_event_bytes) > limits.max_events_total_bytes:
                stored[2] = True
                store_event("truncated", json.dumps({
                    "reason": "event_limit", "max_events": limits.max_events,
                    "max_total_bytes": limits.max_events_total_bytes,
                    "message": "the job emitted more events than it may store; its later events are dropped",
                }))
                return
            if kind in TERMINAL or kind in RESERVED_EVENTS:
                kind = f"module_{kind}"
            if len(data) > limits.max_event_bytes:
                store_event("truncated", json.dumps({
                    "reason": "event_too_large", "type": kind[:200], "bytes": len(data), "max_event_bytes": limits.max_event_bytes,
                }))
                return
            text = data.decode("utf-8", "replace")
            try:
                json.loads(text)
            except ValueError:
                text = json.dumps(text)
            store_event(kind, text)

        frame = protocol.encode_job_run(index, attempt, job_uuid, payload.encode())
        outcome: tuple[str, Any]
        try:
            reply = await pool.request(frame, timeout_s, sink)
            code, rc, data = protocol.decode_job_end(reply)
            # As in c-web-modules: the first set_result/set_error decides; the
            # return code counts only when the job set neither.
            if code == protocol.JobOutcome.ERROR:
                outcome = ("error", data[: limits.max_event_bytes].decode("utf-8", "replace"))
            elif code == protocol.JobOutcome.RESULT and len(data) > limits.max_result_bytes:
                outcome = ("error", f"result_too_large: the job's result is {len(data)} bytes, over the limit of "
                                    f"{limits.max_result_bytes} (CWEB_JOB_MAX_RESULT_BYTES)")
            elif code == protocol.JobOutcome.RESULT:
                outcome = ("done", data)
            elif rc != 0:
                outcome = ("error", f"the job returned {rc}")
            else:
                outcome = ("done", b"{}")
        except WorkerGone:
            outcome = ("error", "the module's worker crashed during the job")
        except TimeoutError:
            outcome = ("error", f"timed out after {timeout_s:g} s")
            # The code may never return: replace the worker before its slot is reused.
            await self.host.replace_worker(version, "job timed out")
        self._release_slot(job_uuid)
        # The outcome is written without waiting for the start's commit: it is
        # queued behind it and conditional on this attempt being the running
        # one, so start, events and outcome often share one commit.
        if job_uuid in self.cancel_requested:
            self.cancel_requested.discard(job_uuid)
            await self._finish(job_uuid, attempt, "canceled")
        else:
            kind, value = outcome
            if kind == "done":
                # A result that is not JSON is kept as the text it is (the
                # original answers it as a JSON string).
                await self._finish(job_uuid, attempt, "done", result=value.decode("utf-8", "replace"))
            else:
                job = await starting
                if job is not None:
                    await self._retry_or_fail(job, attempt, value)
        if await starting is None:
            log.warning("job %s ran although its start was refused; its outcome was dropped", job_uuid)
        if pending_events:
            await asyncio.gather(*pending_events, return_exceptions=True)

    def _publish_written(self, written: asyncio.Future) -> None:
        if not written.cancelled() and written.exception() is None and written.result() is not None:
            self._publish(written.result())

    async def _retry_or_fail(self, job: dict, attempt: int, error: str) -> None:
        if attempt < job["max_attempts"]:
            delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            when = time.time() + delay
            job_uuid = job["job_uuid"]

            ev = await self.store.retry_later(job_uuid, attempt, when, error,
                                              json.dumps({"attempt": attempt, "error": error, "delay_s": round(delay, 3)}))
            if ev is not None:
                self._publish(ev)
                self._enqueue(job_uuid, job["module_hash"], job["priority"], when, job["seq"], _spec(job))
            return
        await self._finish(job["job_uuid"], attempt, "failed", error=error)

    async def _finish(self, job_uuid: str, attempt: int | None, state: str, *, result: str | None = None,
                      error: str | None = None, only_if_state: str = "running") -> bool:
        """Conditional final write plus exactly one terminal event."""
        now = time.time()

        data = _as_json_text(result) if state == "done" else json.dumps(error) if state == "failed" else "null"
        ev = await self.store.finish(job_uuid, attempt, state, result=result, error=error, only_if_state=only_if_state,
                                     event_data=data, now=now)
        if ev is None:
            return False
        self.finished += 1
        self._publish(ev)
        return True

    # ---- cancel ------------------------------------------------------------------------

    async def cancel(self, job_uuid: str) -> dict:
        """Cancel a job: pending ones at once; running ones through the module (hook and flag),
        replacing the worker if the job ignores it past the grace period. 409 once finished."""
        for _ in range(3):
            job = await self.get(job_uuid)
            if job["state"] in TERMINAL:
                raise Conflict(f"job {job_uuid} is already {job['state']}", code="job_finished", state=job["state"])
            if job_uuid in self.running:
                # Dispatched (its start may not be committed yet): cancel it where it runs.
                await self._cancel_running(job_uuid)
                job = await self.get(job_uuid)
                if job["state"] in TERMINAL:
                    self.cancel_requested.discard(job_uuid)
                if job["state"] == "pending" and job_uuid not in self.running:
                    self.cancel_requested.discard(job_uuid)
                    continue  # between two attempts: cancel it as pending
                break
            if job["state"] == "pending":
                # Not dispatched: take it out of the queue (its heap entry goes stale), then cancel.
                self.queued.pop(job_uuid, None)
                timer = self.timers.pop(job_uuid, None)
                if timer is not None:
                    timer.cancel()
                if await self._finish(job_uuid, None, "canceled", only_if_state="pending"):
                    return {"job_uuid": job_uuid, "state": "canceled"}
                # No longer pending in the database: it ended meanwhile; look again.
                continue
            if job["state"] == "running" and self.store.shared:
                # Running on another node: that node cancels it; wait as long as a local cancel would.
                await self.store.notify_cancel(job_uuid)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 2 * CANCEL_GRACE_S + 1.0
                while loop.time() < deadline:
                    await asyncio.sleep(CANCEL_RESEND_S)
                    job = await self.get(job_uuid)
                    if job["state"] != "running":
                        break
                if job["state"] == "pending":
                    continue  # between two attempts: cancel it as pending
                break
        return {"job_uuid": job_uuid, "state": job["state"]}

    async def _cancel_running(self, job_uuid: str) -> None:
        self.cancel_requested.add(job_uuid)
        task = self.running.get(job_uuid)
        if task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_GRACE_S
        while not task.done() and loop.time() < deadline:
            version = self.running_version.get(job_uuid)
            if version is not None and version.events is not None:
                version.events.send(protocol.encode_job_cancel(job_uuid))
            await asyncio.wait({task}, timeout=min(CANCEL_RESEND_S, max(0.0, deadline - loop.time())))
        if not task.done():
            version = self.running_version.get(job_uuid)
            if version is not None:
                log.warning("job %s ignored cancellation for %g s; replacing its worker", job_uuid, CANCEL_GRACE_S)
                await self.host.replace_worker(version, "job ignored cancellation")
            await asyncio.wait({task}, timeout=CANCEL_GRACE_S)

    # ---- queries -----------------------------------------------------------------------

    async def get(self, job_uuid: str) -> dict:
        job = await self.store.job(job_uuid)
        if job is None:
            raise NotFound(f"no job {job_uuid}", code="job_not_found")
        return job

    async def list(self, state: str | None, limit: int, cursor: int | None, module: str | None = None) -> tuple[list[dict], int | None]:
        if state is not None and state not in {s.value for s in JobState}:
            raise BadRequest(f"state must be one of {', '.join(s.value for s in JobState)}", code="invalid_state")
        limit = max(1, min(limit, 1000))
        jobs = await self.store.jobs(state, module, cursor, limit + 1)
        next_cursor = jobs[limit - 1]["seq"] if len(jobs) > limit else None
        return jobs[:limit], next_cursor

    async def events_since(self, job_uuid: str, since: int, limit: int = REPLAY_PAGE, max_bytes: int = PAGE_BYTES) -> list[dict]:
        """Stored events after `since`, oldest first: up to limit of them, and
        no more once their data passed max_bytes (always at least one)."""
        return await self.store.events_since(job_uuid, since, limit, max_bytes)

    async def counts(self) -> dict[str, int]:
        rows = await self.store.counts()
        return {s.value: 0 for s in JobState} | dict(rows)

    async def counts_by_module(self) -> dict[tuple[str, str], int]:
        """(module, state) -> jobs; every state of a module that has any job, zeros included."""
        rows = await self.store.counts_by_module()
        out: dict[tuple[str, str], int] = {}
        for module in {r[0] for r in rows}:
            out.update({(module, s.value): 0 for s in JobState})
        out.update({(m, st): n for m, st, n in rows})
        return out

    def module_of(self, job_uuid: str) -> str:
        """The module a running job's attempt runs in ("" once it is no longer running)."""
        v = self.running_version.get(job_uuid)
        return v.name if v is not None else ""

    # ---- live events --------------------------------------------------------------------

    def subscribe(self, job_uuid: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.subscribers.setdefault(job_uuid, set()).add(q)
        return q

    def unsubscribe(self, job_uuid: str, q: asyncio.Queue) -> None:
        subs = self.subscribers.get(job_uuid)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self.subscribers[job_uuid]
                self.remote_seen.pop(job_uuid, None)

    def _publish(self, ev: dict) -> None:
        for q in self.subscribers.get(ev["job_uuid"], ()):
            q.put_nowait(ev)
        for q in self.subscribers.get("*", ()):
            q.put_nowait(ev)

    async def stream(self, job_uuid: str, since: int):
        """Stored events after `since`, then live ones, ending after the terminal event."""
        job = await self.get(job_uuid)
        q = self.subscribe(job_uuid)
        try:
            last = since
            while page := await self.events_since(job_uuid, last):
                for ev in page:
                    last = ev["event_id"]
                    yield ev
                    if ev["type"] in TERMINAL:
                        return
                if len(page) < REPLAY_PAGE:
                    break
            if job["state"] in TERMINAL:
                # Terminal event older than `since`: nothing more will come.
                return
            while True:
                ev = await q.get()
                if ev["event_id"] <= last:
                    continue
                last = ev["event_id"]
                yield ev
                if ev["type"] in TERMINAL:
                    return
        finally:
            self.unsubscribe(job_uuid, q)

    # ---- jobs_create() from module code --------------------------------------------------

    async def on_jobs_create(self, version: Version, frame: bytes) -> None:
        seq, name, payload = protocol.decode_jobs_create(frame)
        rc, value = -1, b""
        try:
            module = version.name
            if not any(j["name"] == name for j in version.decl["jobs"]):
                owners = [v.name for v in self.host.active.values() if any(j["name"] == name for j in v.decl["jobs"])]
                if len(owners) != 1:
                    raise NotFound(f"job {name!r} is defined by {len(owners)} modules", code="job_not_found")
                module = owners[0]
            body = json.loads(payload.decode("utf-8") or "{}")
            job, _ = await self.submit(module, name, body)
            rc, value = 0, job["job_uuid"].encode()
        except Exception as exc:  # noqa: BLE001 - the module gets -1 and the reason is logged
            log.warning("jobs_create(%r) from module %s failed: %s", name, version.name, exc)
        if version.events is not None:
            version.events.send(protocol.encode_reply(seq, rc, value))
