"""Which module versions are active, and every deploy ever made.

`RegistryStore` is the interface; `Registry` keeps it in a small SQLite file
owned by the api (<data-dir>/registry.db), `api/registry_pg.py PgRegistry`
in the PostgreSQL every node of a cluster shares. In SQLite, every call
runs on the registry's own thread, never on the event loop: a slow disk, an
fsync or a lock held elsewhere delays that call only (and at most
BUSY_TIMEOUT_MS for a lock), never the requests the loop is serving. A full
disk surfaces as InsufficientStorage (507).
"""

from __future__ import annotations

import abc
import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from api.errors import Unavailable, disk_full_is_507

# How long a call waits for a lock another connection holds before failing.
BUSY_TIMEOUT_MS = 2000

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    module_hash   TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    author        TEXT NOT NULL DEFAULT '',
    source_sha256 TEXT NOT NULL,
    build_key     TEXT NOT NULL,
    decl          TEXT NOT NULL,
    first_seen    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS modules (
    name          TEXT PRIMARY KEY,
    module_hash   TEXT NOT NULL REFERENCES artifacts(module_hash),
    deployed_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deploys (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL,
    module_hash   TEXT,
    action        TEXT NOT NULL,
    at            REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deploys_name ON deploys(name, id);
"""


class RegistryStore(abc.ABC):
    """What the host, the deployer and the control plane ask of a registry."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Ready the store (tables created)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what open() took."""

    @abc.abstractmethod
    async def record_artifact(self, module_hash: str, decl: dict, source_sha256: str, build_key: str) -> None:
        """Remember an artifact that was loaded once (idempotent)."""

    @abc.abstractmethod
    async def artifact(self, module_hash: str) -> dict | None:
        """module_hash, name, author, source_sha256, build_key, decl, first_seen."""

    @abc.abstractmethod
    async def activate(self, name: str, module_hash: str, action: str = "deploy") -> float:
        """Make module_hash the active version of name; its deployed_at."""

    @abc.abstractmethod
    async def remove(self, name: str) -> None:
        """name is no longer active (its history stays)."""

    @abc.abstractmethod
    async def active(self) -> list[tuple[str, str, float]]:
        """(name, module_hash, deployed_at) in deploy order."""

    @abc.abstractmethod
    async def versions(self, name: str) -> list[dict]:
        """Every artifact ever deployed as name, newest first."""

    @abc.abstractmethod
    async def deploys_of(self, module_hash: str) -> list[dict]:
        """Every deploy, rollback and removal of module_hash, oldest first."""


class Registry(RegistryStore):
    """The registry in SQLite: each call awaited while its thread does the work."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="cweb-registry")
        self.db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise Unavailable(f"the registry stayed locked for {BUSY_TIMEOUT_MS} ms; retry", code="registry_busy") from exc
            raise

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    async def close(self) -> None:
        if self.db is not None:
            await self._run(self.db.close)
        self.executor.shutdown(wait=False)

    async def record_artifact(self, module_hash: str, decl: dict, source_sha256: str, build_key: str) -> None:
        with disk_full_is_507("the deploy record"):
            await self._run(self._record_artifact, module_hash, decl, source_sha256, build_key)

    async def artifact(self, module_hash: str) -> dict | None:
        return await self._run(self._artifact, module_hash)

    async def activate(self, name: str, module_hash: str, action: str = "deploy") -> float:
        with disk_full_is_507("the deploy record"):
            return await self._run(self._activate, name, module_hash, action)

    async def remove(self, name: str) -> None:
        with disk_full_is_507("the removal record"):
            await self._run(self._remove, name)

    async def active(self) -> list[tuple[str, str, float]]:
        return await self._run(self._active)

    async def versions(self, name: str) -> list[dict]:
        return await self._run(self._versions, name)

    async def deploys_of(self, module_hash: str) -> list[dict]:
        return await self._run(self._deploys_of, module_hash)

    # ---- on the registry's thread ----------------------------------------

    def _record_artifact(self, module_hash: str, decl: dict, source_sha256: str, build_key: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?)",
            (module_hash, decl["name"], decl.get("author", ""), source_sha256, build_key, json.dumps(decl), time.time()),
        )

    def _artifact(self, module_hash: str) -> dict | None:
        row = self.db.execute(
            "SELECT module_hash, name, author, source_sha256, build_key, decl, first_seen FROM artifacts WHERE module_hash = ?",
            (module_hash,),
        ).fetchone()
        if row is None:
            return None
        return {
            "module_hash": row[0], "name": row[1], "author": row[2], "source_sha256": row[3],
            "build_key": row[4], "decl": json.loads(row[5]), "first_seen": row[6],
        }

    def _activate(self, name: str, module_hash: str, action: str = "deploy") -> float:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO modules VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET module_hash = excluded.module_hash, deployed_at = excluded.deployed_at",
                (name, module_hash, now),
            )
            self.db.execute("INSERT INTO deploys (name, module_hash, action, at) VALUES (?, ?, ?, ?)", (name, module_hash, action, now))
        return now

    def _remove(self, name: str) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM modules WHERE name = ?", (name,))
            self.db.execute("INSERT INTO deploys (name, module_hash, action, at) VALUES (?, NULL, 'remove', ?)", (name, time.time()))

    def _active(self) -> list[tuple[str, str, float]]:
        return self.db.execute("SELECT name, module_hash, deployed_at FROM modules ORDER BY deployed_at").fetchall()

    def _versions(self, name: str) -> list[dict]:
        rows = self.db.execute(
            "SELECT d.module_hash, a.source_sha256, MIN(d.at), MAX(d.at) FROM deploys d JOIN artifacts a USING(module_hash) "
            "WHERE d.name = ? AND d.module_hash IS NOT NULL GROUP BY d.module_hash ORDER BY MAX(d.at) DESC",
            (name,),
        ).fetchall()
        return [{"module_hash": r[0], "source_sha256": r[1], "deployed_at": r[2], "last_deployed_at": r[3]} for r in rows]

    def _deploys_of(self, module_hash: str) -> list[dict]:
        rows = self.db.execute("SELECT name, action, at FROM deploys WHERE module_hash = ? ORDER BY id", (module_hash,)).fetchall()
        return [{"name": r[0], "action": r[1], "at": r[2]} for r in rows]
