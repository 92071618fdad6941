"""The PostgreSQL connection every shared store of a cluster uses (asyncpg).

Set CWEB_DATABASE_URL=postgresql://… and the registry, jobs, builds and the
node list live in one database that every node shares (docs/CLUSTER.md);
unset, each of them is an SQLite file of this process, as before.

One `Database` per api process: a pool for queries, and one connection of
its own that LISTENs, because a pooled connection can be handed to another
query between notifications. Each store declares its tables with
`migrate()`, which runs under an advisory lock: nodes that start together
do not race to create the same table.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable

import asyncpg

from api.errors import Unavailable

log = logging.getLogger("cweb.pg")

# Seconds a starting node waits for the database (a stack starts its
# services together; PostgreSQL may come up after the first node).
CONNECT_WAIT_S = 60.0
# Seconds one query may take before it fails: a node never hangs on a stuck database.
COMMAND_TIMEOUT_S = 10.0
POOL_MAX = 10
# Seconds between attempts to get the listening connection back.
RELISTEN_S = 1.0

Listener = Callable[[str], None]


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class Database:
    def __init__(self, url: str, *, pool_max: int = POOL_MAX) -> None:
        self.url = url
        self.pool_max = pool_max
        self.pool: asyncpg.Pool | None = None
        self.listeners: dict[str, list[Listener]] = {}
        # Called after the listening connection came back: notifications
        # sent while it was away are lost, so their receivers resynchronize.
        self.on_relisten: list[Callable[[], Awaitable[None]]] = []
        self._listen_conn: asyncpg.Connection | None = None
        # One LISTEN at a time on that connection: asyncpg refuses a second
        # operation while one is in progress.
        self._listen_lock = asyncio.Lock()
        # The channels the current listening connection LISTENs on.
        self._listening: set[str] = set()
        self._watch: asyncio.Task | None = None
        self._closing = False

    async def open(self, wait_s: float = CONNECT_WAIT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            try:
                self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_max,
                                                      command_timeout=COMMAND_TIMEOUT_S)
                break
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                if loop.time() >= deadline:
                    raise Unavailable(f"the database did not answer within {wait_s:g} s: {exc}",
                                      code="database_unavailable") from exc
                log.info("waiting for the database (%s)", exc)
                await asyncio.sleep(1.0)
        self._watch = asyncio.create_task(self._keep_listening())

    async def close(self) -> None:
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
        if self._listen_conn is not None:
            self._listen_conn.terminate()
        if self.pool is not None:
            await self.pool.close()

    async def migrate(self, name: str, schema: str) -> None:
        """Create what `schema` declares (idempotent statements), one node at a time."""
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", zlib.crc32(name.encode()))
            await conn.execute(schema)

    async def notify(self, channel: str, payload: str) -> None:
        assert self.pool is not None
        await self.pool.execute("SELECT pg_notify($1, $2)", channel, payload)

    def listen(self, channel: str, callback: Listener) -> None:
        """Call callback(payload) for every notification on channel, from now
        on (including after the listening connection is re-established)."""
        first = channel not in self.listeners
        self.listeners.setdefault(channel, []).append(callback)
        if first:
            # Also while the listening connection is being set up: whichever of
            # the two comes second under the lock does the LISTEN.
            asyncio.get_running_loop().create_task(self._add_listener(channel))

    async def _add_listener(self, channel: str) -> None:
        async with self._listen_lock:
            conn = self._listen_conn
            if conn is None or conn.is_closed() or channel in self._listening:
                return  # _keep_listening listens on the next connection
            try:
                await conn.add_listener(channel, self._deliver)
                self._listening.add(channel)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("cannot listen on %s: %s; resynchronizing when the connection is back", channel, exc)

    def _deliver(self, conn: asyncpg.Connection, pid: int, channel: str, payload: str) -> None:
        for callback in self.listeners.get(channel, ()):
            try:
                callback(payload)
            except Exception:  # noqa: BLE001 - one receiver's bug must not stop the others
                log.exception("listener of %s failed", channel)

    async def _keep_listening(self) -> None:
        first = True
        while not self._closing:
            try:
                conn = await asyncpg.connect(self.url, timeout=COMMAND_TIMEOUT_S)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                async with self._listen_lock:
                    self._listening = set()
                    for channel in list(self.listeners):
                        await conn.add_listener(channel, self._deliver)
                        self._listening.add(channel)
                    self._listen_conn = conn
                if not first:
                    log.warning("database notifications are back; resynchronizing")
                    for resync in self.on_relisten:
                        await resync()
                first = False
                await lost.wait()
                log.warning("lost the database's listening connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying while the node runs
                log.warning("cannot listen for database notifications: %s", exc)
            await asyncio.sleep(RELISTEN_S)
