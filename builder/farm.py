"""The build farm: one queue in front of N builders, identical work done once.

    BuildFarm.build(source, filename, client=...)  -> BuildResult (+ .build)

Scheduling is least-loaded push from this one queue: the farm knows every
builder's slots and running builds, and hands the next build to the builder
with the most free slots the moment one frees up, so no build waits on a
busy builder while another is idle, and no builder ever runs more than its
slots. (Why push and not builders pulling leases: docs/ARCHITECTURE.md.)

- **Fairness.** One FIFO per client (API key or address); the dispatcher
  takes from the clients in turn, so one client's 500 uploads delay another's
  one upload by at most one build per busy client, not by 500.
- **Join in flight.** A build whose key is already queued or compiling is not
  queued again: the caller waits for that build and gets its artifact with
  `joined: true`. Builds with the cache bypassed never join.
- **Shared action cache.** Before queueing, the farm asks the store (shared
  by every builder) for the key; a hit compiles nothing and queues nothing.
- **Builder loss.** An executor raising a `retryable` BuildError (the
  connection dropped mid-compile, the builder vanished or is full) puts the
  build back at the head of its client's queue, to run on another builder
  when there is one; after limits.MAX_BUILD_ATTEMPTS the build fails with that
  error. Compile errors, timeouts and output floods are final, never retried.
- **Live log.** The compiler's output goes to every watcher of the build
  (GET /builds/{id}/log) as it comes.

An executor is anything with `name`, `slots` and
`execute(source, filename, use_cache=, on_log=) -> BuildResult`:
builder.local.LocalBuilder (the embedded pool) and api.remote_builder.RemoteBuilder.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from builder import limits
from builder.errors import BuildBusy, BuilderLost, BuildError
from builder.interface import Builder
from builder.local import BuildResult, check_source

log = logging.getLogger("cweb.farm")

STATES = ("queued", "running", "done", "failed")


class Executor(Protocol):
    name: str
    slots: int

    async def execute(self, source: bytes, filename: str | None = None, *, use_cache: bool = True,
                      on_log: Callable[[str], None] | None = None) -> BuildResult: ...


class NoBuilder(BuildError):
    """No builder answered for limits.NO_BUILDER_WAIT_SECONDS while a build waited."""

    code = "builder_unreachable"
    status = 503


@dataclass(eq=False)
class Build:
    """One build as the farm tracks it, from queued to done or failed."""

    id: str
    key: str
    client: str
    filename: str
    use_cache: bool
    source: bytes | None
    state: str = "queued"
    builder: str | None = None
    attempts: int = 0
    tried: list[str] = field(default_factory=list)
    joined: int = 0
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    queue_ms: float = 0.0
    compile_ms: float = 0.0
    cache_hit: bool = False
    result: BuildResult | None = None
    error: BuildError | OSError | None = None
    log: list[str] = field(default_factory=list)
    log_bytes: int = 0
    done: asyncio.Future | None = None
    watchers: set[asyncio.Queue] = field(default_factory=set)
    _queued_mono: float = field(default_factory=time.monotonic)
    _started_mono: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def info(self, joined: bool = False) -> dict:
        """The `build` object of a deploy answer."""
        return {"id": self.id, "builder": self.builder, "queue_ms": round(self.queue_ms, 2),
                "compile_ms": round(self.compile_ms, 2), "joined": joined}

    def summary(self, position: int | None = None) -> dict:
        """GET /builds/{id}."""
        out = {
            "id": self.id, "state": self.state, "file": self.filename, "client": self.client,
            "builder": self.builder, "attempts": self.attempts, "joined": self.joined,
            "position": position, "queued_at": self.queued_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "queue_ms": round(self.queue_ms, 2),
            "compile_ms": round(self.compile_ms, 2), "cache_hit": self.cache_hit,
            "build_key": self.key if len(self.key) == 64 else None,
            "module_hash": self.result.module_hash if self.result else None,
            "error": getattr(self.error, "code", "storage_error") if self.error else None,
            "message": getattr(self.error, "message", str(self.error)) if self.error else None,
        }
        return out


class FairQueue:
    """One FIFO per client, served in turns."""

    def __init__(self) -> None:
        self._clients: collections.OrderedDict[str, collections.deque[Build]] = collections.OrderedDict()
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def count(self, client: str) -> int:
        q = self._clients.get(client)
        return len(q) if q else 0

    def push(self, build: Build, front: bool = False) -> None:
        q = self._clients.get(build.client)
        if q is None:
            q = self._clients[build.client] = collections.deque()
        if front:
            q.appendleft(build)
        else:
            q.append(build)
        self._n += 1

    def pop(self) -> Build | None:
        """The head of the next client's FIFO; that client goes to the back of the turn."""
        while self._clients:
            client, q = next(iter(self._clients.items()))
            if not q:
                del self._clients[client]
                continue
            build = q.popleft()
            self._n -= 1
            if q:
                self._clients.move_to_end(client)
            else:
                del self._clients[client]
            return build
        return None

    def remove(self, build: Build) -> bool:
        q = self._clients.get(build.client)
        if q is None or build not in q:
            return False
        q.remove(build)
        self._n -= 1
        if not q:
            del self._clients[build.client]
        return True

    def position(self, build: Build) -> int | None:
        """How many builds leave the queue before this one (0: next)."""
        q = self._clients.get(build.client)
        if q is None:
            return None
        try:
            i = q.index(build)
        except ValueError:
            return None
        ahead = i
        before = True
        for client, other in self._clients.items():
            if client == build.client:
                before = False
                continue
            # Clients ahead in the turn get i+1 builds out before ours, the rest i.
            ahead += min(len(other), i + 1 if before else i)
        return ahead

    def __iter__(self) -> Iterator[Build]:
        for q in self._clients.values():
            yield from q


@dataclass(eq=False)
class _Slot:
    executor: Executor
    running: int = 0
    down_until: float = 0.0

    @property
    def free(self) -> int:
        return self.executor.slots - self.running


class BuildFarm(Builder):
    """The queue and the dispatcher. Lives on one event loop (the api's).

    The api's Builder: builds go through the queue; manifests, sources, the
    glue and the mode come from `reader` (the embedded LocalBuilder, or a
    RemoteBuilder of the shared store)."""

    def __init__(self, executors: list[Executor] | None = None, *,
                 key_for: Callable[[str], str | None] | None = None,
                 cached: Callable[[str], Awaitable[BuildResult | None]] | None = None,
                 max_source_bytes: int = limits.MAX_SOURCE_BYTES, reader: Builder | None = None) -> None:
        self.reader = reader
        self.key_for = key_for
        self.cached = cached
        self.max_source_bytes = max_source_bytes
        self.queue = FairQueue()
        self.builds: dict[str, Build] = {}
        self._history: collections.deque[str] = collections.deque()
        self._inflight: dict[str, Build] = {}
        self._slots: dict[str, _Slot] = {}
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        # Called with every Build that finishes (metrics).
        self.on_finish: list[Callable[[Build], None]] = []
        # Called with a Build whenever its state changes (queued, running,
        # queued again, done, failed): the api records builds of a cluster.
        # Observers must not block: they run on the dispatcher's path.
        self.on_change: list[Callable[[Build], None]] = []
        self.set_executors(executors or [])

    # ---- the Builder interface, besides build() ----

    @property
    def mode(self) -> str:
        return self.reader.mode if self.reader is not None else "farm"

    @property
    def sandboxed(self) -> bool:  # type: ignore[override]
        return self.reader.sandboxed if self.reader is not None else True

    @property
    def store(self):  # type: ignore[no-untyped-def]
        """The store the api can read directly, if any."""
        return getattr(self.reader, "store", None)

    async def glue_object(self) -> str | None:
        return await self.reader.glue_object() if self.reader is not None else None

    async def manifest(self, module_hash: str) -> dict | None:
        return await self.reader.manifest(module_hash) if self.reader is not None else None

    async def source(self, source_sha256: str) -> bytes | None:
        return await self.reader.source(source_sha256) if self.reader is not None else None

    # ---- builders ----

    def set_executors(self, executors: list[Executor]) -> None:
        """The builders that exist now (discovery calls this again as they come and go).
        A builder that left keeps its running builds until they end."""
        current = {e.name: e for e in executors}
        for name in list(self._slots):
            if name not in current:
                del self._slots[name]
        for name, e in current.items():
            slot = self._slots.get(name)
            if slot is None:
                self._slots[name] = _Slot(e)
            elif slot.executor is not e:
                slot.executor = e
                slot.down_until = 0.0
        self._dispatch()

    def mark_up(self, name: str) -> None:
        """A builder answered its health check: use it again."""
        slot = self._slots.get(name)
        if slot is not None and slot.down_until:
            slot.down_until = 0.0
            self._dispatch()

    @property
    def builders(self) -> list[dict]:
        now = time.monotonic()
        return [{"name": n, "slots": s.executor.slots, "running": s.running, "up": s.down_until <= now}
                for n, s in sorted(self._slots.items())]

    @property
    def slots(self) -> int:
        return sum(s.executor.slots for s in self._slots.values())

    def _pick(self, build: Build) -> _Slot | None:
        """The least-loaded builder that is up and has a free slot, preferring
        one this build has not failed on."""
        now = time.monotonic()
        best: _Slot | None = None
        best_rank: tuple = ()
        for slot in self._slots.values():
            if slot.free <= 0 or slot.down_until > now:
                continue
            rank = (slot.executor.name in build.tried, -slot.free / slot.executor.slots, slot.running)
            if best is None or rank < best_rank:
                best, best_rank = slot, rank
        return best

    # ---- the queue ----

    async def build(self, source: bytes, filename: str | None = None, *, use_cache: bool = True,
                    client: str = "", avoid: str | None = None, build_id: str | None = None) -> BuildResult:
        """Source -> artifact through the queue. Raises a BuildError subclass.

        avoid: a builder to use only when no other has room (a reproducibility
        check builds on a second builder). build_id: the id to give a new
        build (a client that wants to follow its log while it waits), when unused."""
        check_source(source, self.max_source_bytes)
        self._start_sweeper()
        source_sha = hashlib.sha256(source).hexdigest()
        key = (self.key_for(source_sha) if self.key_for else None) or source_sha
        if use_cache:
            running = self._inflight.get(key)
            if running is not None:
                running.joined += 1
                return await self._wait(running, joined=True)
            if self.cached is not None:
                started = time.perf_counter()
                hit = await self.cached(source_sha)
                if hit is not None:
                    b = self._new(key, client, filename, use_cache, None, build_id)
                    b.state, b.builder, b.cache_hit, b.result = "done", "cache", True, hit
                    b.started_at = b.finished_at = time.time()
                    hit.build_ms = (time.perf_counter() - started) * 1000
                    self._finish(b)
                    return dataclasses.replace(hit, build=b.info())
                # Someone else may have queued the same key while we looked.
                running = self._inflight.get(key)
                if running is not None:
                    running.joined += 1
                    return await self._wait(running, joined=True)
        if len(self.queue) >= limits.MAX_QUEUED_BUILDS:
            raise BuildBusy(f"the build queue is full ({limits.MAX_QUEUED_BUILDS} builds); retry shortly")
        if self.queue.count(client) >= limits.MAX_QUEUED_PER_CLIENT:
            raise BuildBusy(f"you have {limits.MAX_QUEUED_PER_CLIENT} builds queued already; wait for them")
        b = self._new(key, client, filename, use_cache, source, build_id)
        if avoid:
            b.tried.append(avoid)
        b.done = asyncio.get_running_loop().create_future()
        if use_cache:
            self._inflight[key] = b
        self.queue.push(b)
        self._emit(b, {"event": "state", **b.summary(self.queue.position(b))})
        self._dispatch()
        return await self._wait(b, joined=False)

    def _new(self, key: str, client: str, filename: str | None, use_cache: bool, source: bytes | None,
             build_id: str | None = None) -> Build:
        if not build_id or build_id in self.builds:
            build_id = uuid.uuid4().hex[:16]
        b = Build(id=build_id, key=key, client=client, filename=filename or "module.c",
                  use_cache=use_cache, source=source)
        self.builds[b.id] = b
        return b

    async def _wait(self, b: Build, joined: bool) -> BuildResult:
        if b.done is not None and not b.done.done():
            # Shielded: one caller giving up (client gone) does not cancel the build for the others.
            await asyncio.shield(b.done)
        if b.error is not None:
            raise b.error
        assert b.result is not None
        return dataclasses.replace(b.result, build=b.info(joined))

    def get(self, build_id: str) -> Build | None:
        return self.builds.get(build_id)

    def position(self, b: Build) -> int | None:
        return self.queue.position(b) if b.state == "queued" else None

    def listing(self, state: str | None = None) -> list[Build]:
        """Newest first."""
        out = [b for b in self.builds.values() if state is None or b.state == state]
        out.sort(key=lambda b: b.queued_at, reverse=True)
        return out

    # ---- dispatch ----

    def _dispatch(self) -> None:
        while len(self.queue):
            head = self._peek()
            if head is None:
                return
            slot = self._pick(head)
            if slot is None:
                return
            b = self.queue.pop()
            assert b is head
            slot.running += 1
            task = asyncio.get_running_loop().create_task(self._run(b, slot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _peek(self) -> Build | None:
        for b in self.queue:
            return b
        return None

    async def _run(self, b: Build, slot: _Slot) -> None:
        name = slot.executor.name
        b.state, b.builder, b.attempts = "running", name, b.attempts + 1
        if name not in b.tried:
            b.tried.append(name)
        b._started_mono = time.monotonic()
        b.started_at = time.time()
        b.queue_ms += (b._started_mono - b._queued_mono) * 1000
        self._emit(b, {"event": "state", **b.summary()})
        try:
            assert b.source is not None
            result = await slot.executor.execute(b.source, b.filename, use_cache=b.use_cache,
                                                 on_log=lambda text: self._log(b, text))
        except BuildError as exc:
            b.compile_ms = (time.monotonic() - b._started_mono) * 1000
            if exc.retryable and b.attempts < limits.MAX_BUILD_ATTEMPTS:
                log.warning("build %s lost on builder %s (%s): retrying", b.id, name, exc.message)
                if not isinstance(exc, BuildBusy):
                    # Out of rotation until its health check answers again.
                    slot.down_until = time.monotonic() + 3600
                self._log(b, f"\n[builder {name} lost the build: {exc.message}; retrying]\n")
                b.state = "queued"
                b._queued_mono = time.monotonic()
                self.queue.push(b, front=True)
                self._emit(b, {"event": "state", **b.summary(self.queue.position(b))})
            else:
                if exc.retryable:
                    exc = BuilderLost(f"{exc.message} (gave up after {b.attempts} attempts)", **exc.extra)
                b.state, b.error = "failed", exc
                self._finish(b)
        except OSError as exc:
            # A full or failing disk: handed to every waiter as it is (the api answers 507 for ENOSPC).
            b.state, b.error = "failed", exc
            self._finish(b)
        except Exception as exc:  # noqa: BLE001 - an executor bug must not leave the build hanging
            log.exception("builder %s failed build %s", name, b.id)
            b.state, b.error = "failed", BuildError(f"the builder failed unexpectedly: {exc}")
            self._finish(b)
        else:
            b.compile_ms = (time.monotonic() - b._started_mono) * 1000
            b.state, b.result, b.cache_hit = "done", result, result.cache_hit
            self._finish(b)
        finally:
            slot.running -= 1
            self._dispatch()

    def _finish(self, b: Build) -> None:
        b.finished_at = time.time()
        b.source = None
        if self._inflight.get(b.key) is b:
            del self._inflight[b.key]
        if b.result is not None and b.key != b.result.build_key and len(b.result.build_key) == 64:
            b.key = b.result.build_key
        if b.done is not None and not b.done.done():
            b.done.set_result(None)
        self._emit(b, {"event": "end", **b.summary()})
        b.watchers.clear()
        self._history.append(b.id)
        while len(self._history) > limits.BUILD_HISTORY:
            self.builds.pop(self._history.popleft(), None)
        for fn in self.on_finish:
            try:
                fn(b)
            except Exception:  # noqa: BLE001 - metrics must not fail a build
                log.exception("build observer failed")

    # ---- sweeping builds no builder can take ----

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Fail queued builds that have waited NO_BUILDER_WAIT_SECONDS while no builder was up."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if any(s.down_until <= now for s in self._slots.values()):
                continue
            for b in [b for b in self.queue if now - b._queued_mono > limits.NO_BUILDER_WAIT_SECONDS]:
                self.queue.remove(b)
                b.state = "failed"
                b.error = NoBuilder(f"no builder was reachable for {limits.NO_BUILDER_WAIT_SECONDS:g} s")
                self._finish(b)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.reader is not None:
            await self.reader.aclose()

    # ---- live log ----

    def _log(self, b: Build, text: str) -> None:
        if not text or b.log_bytes >= limits.BUILD_LOG_BYTES:
            return
        text = text[: limits.BUILD_LOG_BYTES - b.log_bytes]
        b.log.append(text)
        b.log_bytes += len(text)
        self._emit(b, {"event": "log", "text": text})

    def _emit(self, b: Build, event: dict) -> None:
        if event["event"] != "log":
            for fn in self.on_change:
                try:
                    fn(b)
                except Exception:  # noqa: BLE001 - an observer must not fail a build
                    log.exception("build observer failed")
        for q in list(b.watchers):
            if q.qsize() < 1000:
                q.put_nowait(event)

    def watch(self, b: Build) -> asyncio.Queue:
        """Events of this build from now on: state, log, end (the last)."""
        q: asyncio.Queue = asyncio.Queue()
        if not b.finished:
            b.watchers.add(q)
        return q

    def unwatch(self, b: Build, q: asyncio.Queue) -> None:
        b.watchers.discard(q)
