"""How every node comes to serve what the shared registry says.

One rule, `Cluster.sync(name)`: compare what this node serves for `name`
with the registry's row and act (load and swap, remove, forward to the
owner). It runs on every trigger: the deploying node's own call
(`POST /_cweb/cluster/sync`), a notification on `cweb_modules`, the resync
after a lost listening connection, a periodic reconcile, and the catch-up of
a node that starts. So a node that misses one trigger converges on the next.

A deploy (rollback, removal) is driven by the node that received it, one at
a time in the cluster (an advisory lock): load on every live node
(prepare), record in the registry, then every node swaps at once; the answer
lists what each node did. Node-to-node calls are plain HTTP to the node's
URL from the nodes table with the API key, so they go through the same
authentication, limits and error shapes as every other control call, and
need no listener or protocol of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import zlib
from collections.abc import AsyncIterator

import httpx

from api.cluster.forward import Forwarder, RemoteModule
from api.cluster.nodes import NodeTable
from api.errors import ApiError, NotFound, Unavailable
from api.modules.host import ModuleHost
from api.modules.version import Version, VersionState
from api.pg import Database
from api.registry_pg import CHANNEL, PgRegistry
from api.settings import NODE_CALL_TIMEOUT_S, NODE_PREPARED_TTL_S, NODE_RECONCILE_S, Settings

log = logging.getLogger("cweb.cluster")

# Seconds a deploy waits for another node's deploy to finish.
DEPLOY_LOCK_WAIT_S = 120.0
_DEPLOY_LOCK = zlib.crc32(b"cweb-deploy")
# Seconds before a module that failed to load on this node is tried again
# by the reconcile (a new deploy tries at once).
RETRY_FAILED_S = 30.0
# Seconds a change made on a notification is credited to the deploy that caused it.
RECENT_CHANGE_S = 60.0


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


class Cluster:
    def __init__(self, settings: Settings, db: Database, registry: PgRegistry, host: ModuleHost) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.host = host
        self.node_id = settings.node_id
        self.nodes = NodeTable(db, settings.node_id, settings.node_url, settings.node_ttl_s)
        # Nodes serving TLS trust each other's certificate (they share it);
        # their URLs must then name a host the certificate covers.
        tls = ssl.create_default_context(cafile=settings.tls_cert) if settings.tls_cert else None
        # Followed to the current map: each refresh replaces it.
        self.forwarder = Forwarder(settings.node_id, lambda node: self.nodes.urls.get(node), timeout=settings.request_timeout,
                                   max_response=settings.max_response_bytes, ws_max_message=settings.ws_max_message,
                                   header=settings.node_header, tls=tls)
        # Each node-to-node call and forwarded request would be an INFO line.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        key = settings.api_keys[0] if settings.api_keys else ""
        self.peers = httpx.AsyncClient(timeout=httpx.Timeout(NODE_CALL_TIMEOUT_S, connect=5),
                                       headers={"authorization": f"Bearer {key}"} if key else {},
                                       verify=tls if tls is not None else True, trust_env=False)
        # One sync at a time on this node: each reads the registry and acts on what it read.
        self.sync_lock = asyncio.Lock()
        # module_hash -> monotonic time before which the reconcile does not load it again.
        self.failed: dict[str, float] = {}
        # name -> (what the last sync that changed something did, its target hash, when):
        # a deploy's own call that finds the work done by the notification reports that.
        self.changed: dict[str, tuple[str, str | None, float]] = {}
        self.tasks: list[asyncio.Task] = []
        # True until the catch-up of start() is done.
        self.starting = True
        self._beat: asyncio.Task | None = None
        self._beat_again = False

    # ---- life ------------------------------------------------------------------

    async def start(self) -> None:
        """Catch up with the registry (every active module loaded or forwarded),
        then join: a node is listed as live only once it serves what the others do."""
        await self.nodes.open()
        await self.nodes.refresh()
        self.db.listen(CHANNEL, self._notified)
        self.db.on_relisten.append(self.reconcile)
        await self.reconcile()
        self.starting = False
        await self.nodes.join(*self.serving())
        self.tasks.append(asyncio.create_task(self._heartbeat()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(ApiError):
            await self.nodes.leave()
        await self.forwarder.aclose()
        await self.peers.aclose()

    def serving(self) -> tuple[dict[str, str], dict[str, str]]:
        """(module -> hash this node serves, module -> the node it forwards to)."""
        return ({n: v.module_hash for n, v in self.host.active.items()},
                {n: r.owner for n, r in self.host.remote.items()})

    async def _heartbeat(self) -> None:
        last_reconcile = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.node_heartbeat_s)
            try:
                await self.nodes.beat(*self.serving())
                await self._take_over()
                if time.monotonic() - last_reconcile >= NODE_RECONCILE_S:
                    last_reconcile = time.monotonic()
                    await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the node keeps serving while the database is away
                log.warning("heartbeat failed: %s", exc)

    def _notified(self, payload: str) -> None:
        try:
            name = json.loads(payload)["name"]
        except (ValueError, KeyError, TypeError):
            return
        asyncio.get_running_loop().create_task(self._sync_logged(name))

    async def _sync_logged(self, name: str) -> None:
        try:
            await self.sync(name)
        except Exception:  # noqa: BLE001 - the next trigger tries again
            log.exception("could not follow module %s", name)

    async def reconcile(self) -> None:
        """Every module of the registry, and every one served here, synced."""
        rows = await self.registry.placements()
        for name in sorted(set(rows) | set(self.host.active) | set(self.host.remote)):
            try:
                # Each reads its row again: a deploy during this loop must not be undone by an older read.
                await self.sync(name)
            except Exception:  # noqa: BLE001 - one module must not stop the others
                log.exception("could not reconcile module %s", name)

    async def _take_over(self) -> None:
        """Placement-one modules whose owner's heartbeat expired move here
        (of several nodes trying, the database lets one win)."""
        live = self.nodes.live() | {self.node_id}
        for name, row in (await self.registry.placements()).items():
            if row["placement"] == "one" and row["owner"] not in live:
                if await self.registry.claim(name, self.node_id, row["owner"]):
                    log.warning("module %s: node %s is gone; this node serves it now", name, row["owner"])
                    await self.sync(name)

    # ---- one module on this node --------------------------------------------------

    async def sync(self, name: str, row: dict | None = None, *, fetched: bool = False, driven: bool = False) -> dict:
        """Make this node serve name as the registry says; what it did.
        driven: called by the deploy in progress, which swaps its prepared
        worker now (other triggers leave a prepared worker to that call)."""
        t0 = time.perf_counter()
        async with self.sync_lock:
            if not fetched:
                row = await self.registry.placement(name)
            report = await self._sync(name, row, driven)
        target = row["module_hash"] if row is not None else None
        if report["outcome"] in ("swapped", "removed", "forwarded"):
            self.changed[name] = (report["outcome"], target, time.monotonic())
        elif driven and report["outcome"] in ("unchanged", "absent"):
            # The notification of this very change got here first.
            done = self.changed.pop(name, None)
            if done is not None and done[1] == target and time.monotonic() - done[2] < RECENT_CHANGE_S:
                report["outcome"] = done[0]
        report = {"node": self.node_id, **report, "ms": _ms(t0)}
        if report["outcome"] not in ("unchanged", "absent", "pending"):
            self._beat_soon()
        return report

    def _beat_soon(self) -> None:
        """What this node serves changed: into its row now, not at the next
        heartbeat, and after the answer (the deploy waits for the swap, not the row)."""
        self._beat_again = True
        if self._beat is None or self._beat.done():
            self._beat = asyncio.create_task(self._beat_while_changed())

    async def _beat_while_changed(self) -> None:
        while self._beat_again:
            self._beat_again = False
            with contextlib.suppress(ApiError):
                await self.nodes.beat(*self.serving())

    async def _sync(self, name: str, row: dict | None, driven: bool) -> dict:
        host = self.host
        if row is None:
            if name in host.active:
                await host.remove(name, record=False)
                return {"outcome": "removed"}
            return {"outcome": "removed" if host.drop_remote(name) else "absent"}
        module_hash = row["module_hash"]
        if row["placement"] == "one" and row["owner"] != self.node_id:
            current = host.remote.get(name)
            if current is not None and current.module_hash == module_hash and current.owner == row["owner"] \
                    and name not in host.active:
                return {"outcome": "unchanged", "module_hash": module_hash, "forwarded_to": row["owner"]}
            art = await self.registry.artifact(module_hash)
            if art is None:
                return {"outcome": "failed", "error": f"artifact {module_hash[:12]} has no record"}
            if name in host.active:
                await host.remove(name, record=False)
            host.set_remote(RemoteModule(name, module_hash, art["decl"], row["deployed_at"], row["owner"], self.forwarder))
            return {"outcome": "forwarded", "module_hash": module_hash, "forwarded_to": row["owner"]}
        v = host.active.get(name)
        # A quarantine is this node's own verdict: it holds until a deploy (driven) of the module.
        if v is not None and v.module_hash == module_hash and (v.state != VersionState.QUARANTINED or not driven):
            return {"outcome": "unchanged", "module_hash": module_hash}
        if not driven and module_hash in host.prepared:
            return {"outcome": "pending", "module_hash": module_hash}
        if not driven and self.failed.get(module_hash, 0) > time.monotonic():
            return {"outcome": "failed", "module_hash": module_hash, "error": "failed recently; retried later"}
        art = await self.registry.artifact(module_hash) or {}
        try:
            await host.activate(module_hash, source_sha256=art.get("source_sha256", ""),
                                build_key=art.get("build_key", ""), deployed_at=row["deployed_at"])
        except ApiError as exc:
            self.failed[module_hash] = time.monotonic() + RETRY_FAILED_S
            if v is None and self.starting:  # the words of ModuleHost.restore, which this replaces
                log.error("could not restore module %s (%s): %s", name, module_hash[:12], exc.message)
            else:
                log.error("module %s: cannot serve %s on this node (the previous version keeps serving): %s",
                          name, module_hash[:12], exc.message)
            return {"outcome": "failed", "module_hash": module_hash, "error": exc.message, "code": exc.code}
        self.failed.pop(module_hash, None)
        return {"outcome": "swapped", "module_hash": module_hash}

    async def prepare(self, module_hash: str) -> dict:
        """Load module_hash here without serving it (the first half of a deploy)."""
        t0 = time.perf_counter()
        try:
            outcome, _decl = await self.host.prepare(module_hash, NODE_PREPARED_TTL_S)
        except ApiError:
            # The swap will not find it; nor should the notification of the
            # deploy try the same load again at once.
            self.failed[module_hash] = time.monotonic() + RETRY_FAILED_S
            raise
        return {"node": self.node_id, "outcome": outcome, "ms": _ms(t0)}

    # ---- a deploy, rollback or removal, driven from this node --------------------

    @contextlib.asynccontextmanager
    async def deploy_lock(self) -> AsyncIterator[None]:
        """One deploy at a time in the whole cluster: a session advisory lock,
        released by the database if this node dies holding it."""
        assert self.db.pool is not None
        async with self.db.pool.acquire() as conn:
            deadline = time.monotonic() + DEPLOY_LOCK_WAIT_S
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _DEPLOY_LOCK):
                if time.monotonic() > deadline:
                    raise Unavailable("another deploy has held the cluster's deploy lock for "
                                      f"{DEPLOY_LOCK_WAIT_S:g} s; retry", code="deploy_busy")
                await asyncio.sleep(0.05)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _DEPLOY_LOCK)

    def _peers(self) -> dict[str, str]:
        return {n: u for n, u in self.nodes.urls.items() if n != self.node_id}

    async def _call(self, node: str, url: str, op: str, body: dict) -> dict:
        t0 = time.perf_counter()
        try:
            r = await self.peers.post(f"{url}/_cweb/cluster/{op}", json=body)
        except httpx.HTTPError as exc:
            return {"node": node, "outcome": "unreachable", "ms": _ms(t0), "error": f"{type(exc).__name__}: {exc}"}
        try:
            answer = r.json()
        except ValueError:
            answer = {}
        if r.status_code != 200:
            return {"node": node, "outcome": "failed", "ms": _ms(t0), "code": answer.get("error", "http_error"),
                    "error": answer.get("message", f"HTTP {r.status_code}")}
        return {**answer, "node": node, "ms": _ms(t0)}

    async def activate(self, module_hash: str, *, source_sha256: str, build_key: str, action: str,
                       placement: str | None) -> tuple[Version, str | None, bool, list[dict]]:
        """Deploy module_hash on every live node: (this node's version, the
        hash active before in the cluster, noop here, what each node did).
        Anything this node refuses (declaration, route conflicts) is refused for all."""
        async with self.deploy_lock():
            await self.nodes.refresh()
            peers = self._peers()
            t0 = time.perf_counter()
            # Validated here first: a refusal reaches the client as a single node's would.
            _outcome, decl = await self.host.prepare(module_hash, NODE_PREPARED_TTL_S)
            name = decl["name"]
            prepare_ms = _ms(t0)
            row = await self.registry.placement(name)
            place = placement or (row["placement"] if row else "all")
            prepared = await asyncio.gather(*(self._call(n, u, "prepare", {"module_hash": module_hash})
                                              for n, u in peers.items())) if place == "all" else []
            try:
                await self.registry.record_artifact(module_hash, decl, source_sha256, build_key)
                deployed_at = await self.registry.activate(name, module_hash, action, placement=place,
                                                           owner=self.node_id if place == "one" else None)
            except BaseException:
                await self.host.unprepare(module_hash)
                raise
            failed = {p["node"] for p in prepared if p["outcome"] not in ("prepared", "serving")}
            t1 = time.perf_counter()

            async def swap_here() -> tuple[Version, Version | None, bool]:
                # Under the sync lock: a sync that read the registry before this deploy
                # recorded it finishes first, and cannot undo this swap afterwards.
                async with self.sync_lock:
                    return await self.host.activate(module_hash, source_sha256=source_sha256, build_key=build_key,
                                                    action=action, deployed_at=deployed_at)

            swaps = [swap_here()]
            swaps += [self._call(n, u, "sync", {"name": name}) for n, u in peers.items() if n not in failed]
            results = await asyncio.gather(*swaps, return_exceptions=True)
            local = results[0]
            if isinstance(local, BaseException):
                raise local
            version, _prev, noop = local
            swap_ms = _ms(t1)
            # Per node: its load (prepare) and its swap, as this node saw them, and their sum.
            reports = [{"node": self.node_id, "outcome": "unchanged" if noop else "swapped", "module_hash": module_hash,
                        "ms": round(prepare_ms + swap_ms, 2), "prepare_ms": prepare_ms, "swap_ms": swap_ms}]
            reports += [p for p in prepared if p["node"] in failed]
            prepare_of = {p["node"]: p["ms"] for p in prepared}
            for r in results[1:]:
                if isinstance(r, BaseException):  # _call answers errors as reports; this is a bug of ours
                    raise r
                before = prepare_of.get(r["node"], 0.0)
                reports.append({**r, "ms": round(before + r["ms"], 2), "prepare_ms": before, "swap_ms": r["ms"]})
            for r in reports:
                if r["outcome"] in ("failed", "unreachable"):
                    log.error("deploy of %s %s: node %s %s: %s", name, module_hash[:12], r["node"], r["outcome"],
                              r.get("error", ""))
            previous = row["module_hash"] if row is not None and row["module_hash"] != module_hash else None
            self._beat_soon()
            return version, previous, noop, sorted(reports, key=lambda r: r["node"])

    async def remove(self, name: str) -> list[dict]:
        """Remove name on every node; what each did."""
        async with self.deploy_lock():
            if await self.registry.placement(name) is None:
                raise NotFound(f"no module named {name!r}", code="module_not_found")
            await self.nodes.refresh()
            await self.registry.remove(name)
            reports = await asyncio.gather(self.sync(name, None, fetched=True, driven=True),
                                           *(self._call(n, u, "sync", {"name": name}) for n, u in self._peers().items()))
            return sorted(reports, key=lambda r: r["node"])

