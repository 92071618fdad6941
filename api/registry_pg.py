"""The registry in the PostgreSQL every node shares (CWEB_DATABASE_URL).

The same tables as api/registry.py (artifacts, modules, deploys), so the
same answers; `modules` also says where a module runs (`placement`: every
node, or `one` node, its `owner`). Every change of what is active is
announced on the `cweb_modules` channel in the transaction that makes it,
so a node hears of it exactly when other nodes can read it
(api/cluster/nodes.py follows the channel).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import asyncpg

from api.errors import Unavailable
from api.pg import Database
from api.registry import RegistryStore

CHANNEL = "cweb_modules"
# Where a module runs: on every live node, or on one node that the others forward to.
PLACEMENTS = ("all", "one")

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    module_hash   TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    author        TEXT NOT NULL DEFAULT '',
    source_sha256 TEXT NOT NULL,
    build_key     TEXT NOT NULL,
    decl          TEXT NOT NULL,
    first_seen    DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS modules (
    name          TEXT PRIMARY KEY,
    module_hash   TEXT NOT NULL REFERENCES artifacts(module_hash),
    deployed_at   DOUBLE PRECISION NOT NULL,
    placement     TEXT NOT NULL DEFAULT 'all',
    owner         TEXT
);
CREATE TABLE IF NOT EXISTS deploys (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL,
    module_hash   TEXT,
    action        TEXT NOT NULL,
    at            DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS deploys_name ON deploys(name, id);
CREATE INDEX IF NOT EXISTS deploys_hash ON deploys(module_hash, id);
"""

# The database's clock, not this node's: nodes on other machines agree on it.
NOW = "extract(epoch from clock_timestamp())"


@contextlib.contextmanager
def database_errors(what: str) -> Iterator[None]:
    """A database that cannot be reached or fails is a 503 naming what failed,
    never a 500: the caller may retry, nothing was half-written (one transaction)."""
    try:
        yield
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise Unavailable(f"the database is unreachable ({what}): {exc}", code="database_unavailable") from exc
    except asyncpg.PostgresError as exc:
        raise Unavailable(f"the database refused {what}: {exc}", code="database_error") from exc


class PgRegistry(RegistryStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.db.pool is not None, "the database is opened first (api/app.py lifespan)"
        return self.db.pool

    async def open(self) -> None:
        with database_errors("creating the registry's tables"):
            await self.db.migrate("registry", SCHEMA)

    async def close(self) -> None:
        pass  # the Database is closed by its owner, after every store

    async def record_artifact(self, module_hash: str, decl: dict, source_sha256: str, build_key: str) -> None:
        with database_errors("the deploy record"):
            await self.pool.execute(
                f"INSERT INTO artifacts VALUES ($1, $2, $3, $4, $5, $6, {NOW}) ON CONFLICT (module_hash) DO NOTHING",
                module_hash, decl["name"], decl.get("author", ""), source_sha256, build_key, json.dumps(decl))

    async def artifact(self, module_hash: str) -> dict | None:
        with database_errors("reading an artifact"):
            row = await self.pool.fetchrow(
                "SELECT module_hash, name, author, source_sha256, build_key, decl, first_seen FROM artifacts WHERE module_hash = $1",
                module_hash)
        if row is None:
            return None
        return {**dict(row), "decl": json.loads(row["decl"])}

    async def activate(self, name: str, module_hash: str, action: str = "deploy", *,
                       placement: str | None = None, owner: str | None = None) -> float:
        """As RegistryStore.activate; placement None keeps the module's
        placement (a new module runs on every node), owner is the node of a
        placement-one module."""
        with database_errors("the deploy record"):
            async with self.pool.acquire() as conn, conn.transaction():
                now = await conn.fetchval(
                    f"INSERT INTO modules (name, module_hash, deployed_at, placement, owner) "
                    f"VALUES ($1, $2, {NOW}, coalesce($3, 'all'), $4) ON CONFLICT (name) DO UPDATE SET "
                    f"module_hash = excluded.module_hash, deployed_at = excluded.deployed_at, "
                    f"placement = coalesce($3, modules.placement), "
                    f"owner = CASE WHEN coalesce($3, modules.placement) = 'one' THEN coalesce($4, modules.owner) END "
                    f"RETURNING deployed_at",
                    name, module_hash, placement, owner)
                await conn.execute("INSERT INTO deploys (name, module_hash, action, at) VALUES ($1, $2, $3, $4)",
                                   name, module_hash, action, now)
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL,
                                   json.dumps({"name": name, "module_hash": module_hash, "action": action}))
        return now

    async def remove(self, name: str) -> None:
        with database_errors("the removal record"):
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM modules WHERE name = $1", name)
                await conn.execute(f"INSERT INTO deploys (name, module_hash, action, at) VALUES ($1, NULL, 'remove', {NOW})", name)
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, json.dumps({"name": name, "action": "remove"}))

    async def active(self) -> list[tuple[str, str, float]]:
        with database_errors("reading the active modules"):
            rows = await self.pool.fetch("SELECT name, module_hash, deployed_at FROM modules ORDER BY deployed_at")
        return [(r[0], r[1], r[2]) for r in rows]

    async def versions(self, name: str) -> list[dict]:
        with database_errors("reading a module's versions"):
            rows = await self.pool.fetch(
                "SELECT d.module_hash, a.source_sha256, MIN(d.at), MAX(d.at) FROM deploys d JOIN artifacts a USING(module_hash) "
                "WHERE d.name = $1 AND d.module_hash IS NOT NULL GROUP BY d.module_hash, a.source_sha256 ORDER BY MAX(d.at) DESC",
                name)
        return [{"module_hash": r[0], "source_sha256": r[1], "deployed_at": r[2], "last_deployed_at": r[3]} for r in rows]

    async def deploys_of(self, module_hash: str) -> list[dict]:
        with database_errors("reading a module's deploys"):
            rows = await self.pool.fetch("SELECT name, action, at FROM deploys WHERE module_hash = $1 ORDER BY id", module_hash)
        return [{"name": r[0], "action": r[1], "at": r[2]} for r in rows]

    # ---- where modules run (api/cluster) ----------------------------------------

    async def placements(self) -> dict[str, dict]:
        """name -> {module_hash, deployed_at, placement, owner} of every active module."""
        with database_errors("reading the active modules"):
            rows = await self.pool.fetch("SELECT name, module_hash, deployed_at, placement, owner FROM modules")
        return {r["name"]: dict(r) for r in rows}

    async def placement(self, name: str) -> dict | None:
        with database_errors("reading a module"):
            row = await self.pool.fetchrow(
                "SELECT name, module_hash, deployed_at, placement, owner FROM modules WHERE name = $1", name)
        return dict(row) if row is not None else None

    async def claim(self, name: str, owner: str, expected: str | None) -> bool:
        """Make owner the node of a placement-one module if its owner is still
        expected (so of several nodes that saw the owner die, one wins)."""
        with database_errors("moving a module"):
            async with self.pool.acquire() as conn, conn.transaction():
                done = await conn.fetchval(
                    "UPDATE modules SET owner = $2 WHERE name = $1 AND placement = 'one' "
                    "AND owner IS NOT DISTINCT FROM $3 RETURNING name", name, owner, expected)
                if done is None:
                    return False
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL,
                                   json.dumps({"name": name, "action": "takeover", "owner": owner}))
        return True
