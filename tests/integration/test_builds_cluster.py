"""GET /builds across nodes (docs/CLUSTER.md "Shared state in PostgreSQL"):
two `python -m api` nodes on one real PostgreSQL and one store; each node's
farm writes its builds to the `builds` table, any node answers for them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import Server, route_module, unique, wait_for
from tests.integration.test_builders import sse_events

KEY = "builds-cluster-key"
AUTH = {"authorization": f"Bearer {KEY}"}

BROKEN = b"""#include <cweb.h>
static int handler(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    return undeclared_thing + 1;
}
"""


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, make_server):
    store = tmp_path / "store"

    def node(i: int) -> Server:
        return make_server(tmp_path / f"node{i}", env={
            "CWEB_DATABASE_URL": postgres_url, "CWEB_STORE_DIR": str(store), "CWEB_API_KEY": KEY,
            "CWEB_NODE_ID": f"node-{i}"})

    return node


def listed(server: Server, **params: str) -> dict[str, dict]:
    with server.client(headers=AUTH) as c:
        r = c.get("/builds", params=params)
    assert r.status_code == 200, r.text
    return {b["id"]: b for b in r.json()["builds"]}


def test_a_build_on_one_node_is_listed_answered_and_logged_on_another(cluster) -> None:
    a, b = cluster(1), cluster(2)
    name = unique("bc")
    # A warning, so the build has log lines to store.
    source = route_module(name, f"/{name}", "hi").replace("(void)ctx; (void)req;", "(void)ctx; (void)req; int unused_on_a = 1;")
    with a.client(headers=AUTH) as c:
        r = c.post("/mgnt", files={"code": ("a.c", source.encode(), "text/x-c")})
    assert r.status_code == 200, r.text
    build_id, module_hash = r.json()["build"]["id"], r.json()["module_hash"]

    # The row is written after the build ends, without holding up the deploy.
    assert wait_for(lambda: listed(b).get(build_id, {}).get("state") == "done", timeout=10), listed(b)
    row = listed(b)[build_id]
    assert ("node-1", "a.c", module_hash, None) == (row["node"], row["file"], row["module_hash"], row["error"])
    assert row["compile_ms"] > 0 and row["finished_at"] >= row["queued_at"]
    assert build_id in listed(b, state="done") and build_id not in listed(b, state="failed")
    # A's own listing names it as A's too (from memory), B's own builds are B's.
    assert "node-1" == listed(a)[build_id]["node"]

    with b.client(headers=AUTH) as c:
        one = c.get(f"/builds/{build_id}")
        assert one.status_code == 200, one.text
        assert ("done", "node-1", module_hash) == (one.json()["state"], one.json()["node"], one.json()["module_hash"])
        log = c.get(f"/builds/{build_id}/log")
        assert log.status_code == 200 and log.headers["content-type"].startswith("text/event-stream")
        missing = c.get("/builds/nope")
        assert (404, "build_not_found") == (missing.status_code, missing.json()["error"])
        assert c.get("/builds/nope/log").status_code == 404
    events = sse_events(log.text)
    assert "state" == events[0][0] and ("end", "done", "node-1") == (events[-1][0], events[-1][1]["state"], events[-1][1]["node"])
    assert "unused_on_a" in "".join(e["text"] for kind, e in events if kind == "log")


def test_a_failed_build_on_one_node_is_listed_failed_with_its_error_on_another(cluster) -> None:
    a, b = cluster(1), cluster(2)
    with a.client(headers=AUTH) as c:
        r = c.post("/mgnt", files={"code": ("broken.c", BROKEN, "text/x-c")})
    assert (422, "compile_failed") == (r.status_code, r.json()["error"]), r.text

    def failed_on_a() -> list[dict]:
        return [x for x in listed(b, state="failed").values() if x["node"] == "node-1" and x["file"] == "broken.c"]

    assert wait_for(lambda: bool(failed_on_a()), timeout=10), listed(b)
    row = failed_on_a()[0]
    assert ("failed", "compile_failed", None) == (row["state"], row["error"], row["module_hash"])
    assert row["message"]
    with b.client(headers=AUTH) as c:
        events = sse_events(c.get(f"/builds/{row['id']}/log").text)
    assert ("end", "failed", "compile_failed") == (events[-1][0], events[-1][1]["state"], events[-1][1]["error"])
    assert "undeclared_thing" in "".join(e["text"] for kind, e in events if kind == "log")


def test_a_build_still_running_on_another_node_ends_its_log_naming_that_node(cluster, postgres_url: str) -> None:
    """A node that is running a build has written its row (state running, the
    log so far); another node's log answer says where to follow it live."""
    b = cluster(2)
    now = time.time()

    async def insert() -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(
                "INSERT INTO builds (node, id, key, client, filename, state, builder, attempts, queued_at, started_at, log) "
                "VALUES ('node-7', 'elsewhere01', 'k', 'addr:x', 'slow.c', 'running', 'local', 1, $1, $1, $2)",
                now, ["compiling slow.c\n"])
        finally:
            await conn.close()

    asyncio.run(insert())
    with b.client(headers=AUTH) as c:
        one = c.get("/builds/elsewhere01").json()
        events = sse_events(c.get("/builds/elsewhere01/log").text)
    assert ("running", "node-7", "local", None) == (one["state"], one["node"], one["builder"], one["finished_at"])
    assert [k for k, _ in events] == ["state", "log", "elsewhere"]
    assert "compiling slow.c\n" == events[1][1]["text"]
    assert ("node-7", "running") == (events[-1][1]["node"], events[-1][1]["state"])
    assert "node-7" in events[-1][1]["message"]
    assert "elsewhere01" in listed(b, state="running")


def test_a_database_that_goes_away_loses_rows_never_builds(tmp_path: Path, postgres_url: str, caplog) -> None:
    """The farm as the api makes it, recording into a real database; once the
    database is gone, builds still succeed and the lost rows are logged."""
    from api.builder_discovery import make_farm
    from api.builds_pg import PgBuilds
    from api.pg import Database

    source = route_module(unique("gone"), "/gone", "x").encode()

    async def scenario() -> tuple[list[str], str]:
        db = Database(postgres_url)
        await db.open()
        rows = PgBuilds(db, "node-1")
        await rows.open()
        setup = await make_farm("", str(tmp_path / "store"), unsafe_builds=True, max_source_bytes=1 << 20, slots=1)
        setup.farm.on_change.append(rows.record)
        try:
            first = await setup.farm.build(source, "gone.c", use_cache=False)
            await asyncio.wait_for(rows._pending.join(), 10)
            states = [r["state"] for r in await db.pool.fetch("SELECT state FROM builds WHERE id = $1", first.build["id"])]
            await db.close()
            second = await setup.farm.build(source, "gone.c", use_cache=False)
            await asyncio.wait_for(rows._pending.join(), 10)
            assert second.module_hash == first.module_hash
            return states, setup.farm.get(second.build["id"]).state
        finally:
            await rows.close()
            await setup.aclose()

    with caplog.at_level("WARNING", logger="cweb.builds"):
        states, second_state = asyncio.run(scenario())
    assert ["done"] == states and "done" == second_state
    assert "cannot record build" in caplog.text
