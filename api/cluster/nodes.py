"""The `nodes` table: every node's id, URL, start and last heartbeat, and
the module hashes it serves (GET /_cweb/nodes).

Ages are measured on the database's clock, so nodes on machines whose
clocks disagree still agree on who is alive.
"""

from __future__ import annotations

import json

from api.pg import Database
from api.registry_pg import NOW, database_errors

CHANNEL = "cweb_nodes"

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id    TEXT PRIMARY KEY,
    node_url   TEXT NOT NULL,
    started    DOUBLE PRECISION NOT NULL,
    last_seen  DOUBLE PRECISION NOT NULL,
    modules    TEXT NOT NULL DEFAULT '{}',
    forwards   TEXT NOT NULL DEFAULT '{}'
);
"""


class NodeTable:
    def __init__(self, db: Database, node_id: str, node_url: str, ttl_s: float) -> None:
        self.db = db
        self.node_id = node_id
        self.node_url = node_url
        self.ttl_s = ttl_s
        # node id -> URL of the live nodes, as of the last heartbeat.
        self.urls: dict[str, str] = {}

    async def open(self) -> None:
        with database_errors("creating the nodes table"):
            await self.db.migrate("nodes", SCHEMA)

    async def join(self, modules: dict[str, str], forwards: dict[str, str]) -> None:
        """This node is up (again): a fresh start time, and its first heartbeat."""
        assert self.db.pool is not None
        with database_errors("joining the cluster"):
            await self.db.pool.execute(
                f"INSERT INTO nodes VALUES ($1, $2, {NOW}, {NOW}, $3, $4) ON CONFLICT (node_id) DO UPDATE SET "
                "node_url = excluded.node_url, started = excluded.started, last_seen = excluded.last_seen, "
                "modules = excluded.modules, forwards = excluded.forwards",
                self.node_id, self.node_url, json.dumps(modules), json.dumps(forwards))
            await self.db.notify(CHANNEL, json.dumps({"node": self.node_id, "event": "joined"}))
        await self.refresh()

    async def beat(self, modules: dict[str, str], forwards: dict[str, str]) -> None:
        assert self.db.pool is not None
        with database_errors("the heartbeat"):
            done = await self.db.pool.execute(
                f"UPDATE nodes SET last_seen = {NOW}, node_url = $2, modules = $3, forwards = $4 WHERE node_id = $1",
                self.node_id, self.node_url, json.dumps(modules), json.dumps(forwards))
        if done == "UPDATE 0":  # deleted by hand, or by a leave of an earlier process with this id
            await self.join(modules, forwards)
        else:
            await self.refresh()

    async def leave(self) -> None:
        """A clean stop: gone at once rather than after the TTL."""
        assert self.db.pool is not None
        with database_errors("leaving the cluster"):
            await self.db.pool.execute("DELETE FROM nodes WHERE node_id = $1", self.node_id)
            await self.db.notify(CHANNEL, json.dumps({"node": self.node_id, "event": "left"}))

    async def list(self) -> list[dict]:
        """Every node with its heartbeat's age and whether it counts as live."""
        assert self.db.pool is not None
        with database_errors("reading the nodes"):
            rows = await self.db.pool.fetch(
                f"SELECT node_id, node_url, started, last_seen, {NOW} - last_seen AS age, modules, forwards "
                "FROM nodes ORDER BY node_id")
        return [{
            "node": r["node_id"], "url": r["node_url"], "started": r["started"], "last_seen": r["last_seen"],
            "heartbeat_age_s": round(r["age"], 3), "live": r["age"] < self.ttl_s, "self": r["node_id"] == self.node_id,
            "modules": json.loads(r["modules"]), "forwards": json.loads(r["forwards"]),
        } for r in rows]

    async def refresh(self) -> dict[str, str]:
        self.urls = {n["node"]: n["url"] for n in await self.list() if n["live"]}
        return self.urls

    def live(self) -> set[str]:
        return set(self.urls)
