"""Several `python -m api` processes as one cluster (docs/CLUSTER.md "Nodes"):
one real PostgreSQL (tests/databases.py), a shared store directory, real
builds, workers and sockets on every node."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from api import schemas
from tests.conftest import EXAMPLES, ROOT, Server, free_port, route_module, unique, wait_for

KEY = "cluster-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
# Short heartbeats so a dead owner is noticed within seconds.
HEARTBEAT_S = "0.5"
TTL_S = "5"


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, make_server):
    """start(n) -> n nodes on one database and one store, each its own data dir and id."""
    store = tmp_path / "store"

    def node(i: int, **env: str) -> Server:
        return make_server(tmp_path / f"node{i}", env={
            "CWEB_DATABASE_URL": postgres_url, "CWEB_STORE_DIR": str(store), "CWEB_API_KEY": KEY,
            "CWEB_NODE_ID": f"node-{i}", "CWEB_NODE_HEARTBEAT_S": HEARTBEAT_S, "CWEB_NODE_TTL_S": TTL_S, **env})

    return node


def deploy(server: Server, source: str, **params: str) -> dict:
    with server.client(headers=AUTH) as c:
        r = c.post("/mgnt", params=params, files={"code": ("module.c", source.encode(), "text/x-c")})
    assert r.status_code == 200, r.text
    return r.json()


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    return subprocess.run([sys.executable, str(ROOT / "cweb"), "--server", server.url, "--api-key", KEY, *args],
                          env=env, capture_output=True, text=True, timeout=300)


def documented(model: type, data: dict) -> dict:
    """data validates against the model the OpenAPI document shows, which names every key."""
    model.model_validate(data)
    assert not set(data) - set(model.model_fields), sorted(set(data) - set(model.model_fields))
    return data


def nodes_view(server: Server) -> dict[str, dict]:
    with server.client(headers=AUTH) as c:
        r = c.get("/_cweb/nodes")
    assert r.status_code == 200, r.text
    return {n["node"]: n for n in documented(schemas.NodeList, r.json())["nodes"]}


def get(server: Server, path: str) -> httpx.Response:
    with server.client() as c:
        return c.get(path)


def test_nodes_are_listed_with_heartbeats_and_every_answer_names_its_node(cluster) -> None:
    a, b = cluster(1), cluster(2)
    view = nodes_view(a)
    assert set(view) == {"node-1", "node-2"}
    assert view["node-1"]["self"] and not view["node-2"]["self"]
    assert all(n["live"] and n["heartbeat_age_s"] < 3 for n in view.values())
    assert view["node-2"]["url"] == b.url
    # The header on the control plane, on errors, on module answers.
    assert get(a, "/healthz").headers["x-cweb-node"] == "node-1"
    assert get(b, "/healthz").headers["x-cweb-node"] == "node-2"
    with a.client() as c:
        refused = c.get("/_cweb/nodes")  # private, like the rest of /_cweb
    assert refused.status_code == 401 and refused.headers["x-cweb-node"] == "node-1"
    missing = get(b, "/no/such/route")
    assert missing.status_code == 404 and missing.headers["x-cweb-node"] == "node-2"


def test_registry_in_postgres_deploy_on_one_node_serves_on_both(cluster) -> None:
    a, b = cluster(1), cluster(2)
    name = unique("hello")
    first = documented(schemas.DeployResult, deploy(a, route_module(name, f"/{name}", "v1")))
    assert {n["node"]: n["outcome"] for n in first["nodes"]} == {"node-1": "swapped", "node-2": "swapped"}
    assert all(n["ms"] > 0 for n in first["nodes"])
    second = deploy(a, route_module(name, f"/{name}", "v2"))
    assert second["previous_hash"] == first["module_hash"]
    assert {n["node"]: n["outcome"] for n in second["nodes"]} == {"node-1": "swapped", "node-2": "swapped"}
    for server, node in ((a, "node-1"), (b, "node-2")):
        r = get(server, f"/{name}")
        assert (r.status_code, r.text, r.headers["x-cweb-node"]) == (200, "v2", node)
    # Each node reports the hash it serves; the history is the shared registry's.
    assert wait_for(lambda: all(n["modules"].get(name) == second["module_hash"] for n in nodes_view(b).values()), 10)
    with b.client(headers=AUTH) as c:
        versions = c.get(f"/modules/{name}/versions").json()
    assert [v["module_hash"] for v in versions["versions"]][:2] == [second["module_hash"], first["module_hash"]]


def test_node_header_can_be_turned_off(cluster) -> None:
    a = cluster(1, CWEB_NODE_HEADER="0")
    assert "x-cweb-node" not in get(a, "/healthz").headers


def test_a_node_that_cannot_load_is_reported_and_keeps_the_previous_version(cluster) -> None:
    # The same artifact, two address-space limits: node-2 cannot map 1.5 GiB of BSS.
    a = cluster(1, CWEB_WORKER_MEMORY_BYTES=str(4 << 30))
    b = cluster(2, CWEB_WORKER_MEMORY_BYTES=str(1 << 30))
    name = unique("big")
    first = deploy(a, route_module(name, f"/{name}", "small"))
    big = route_module(name, f"/{name}", "big", extra="static char big[1536u << 20];\n"
                       "__attribute__((used)) char *big_ref(void) { return big; }")
    second = deploy(a, big)
    by_node = {n["node"]: n for n in second["nodes"]}
    assert by_node["node-1"]["outcome"] == "swapped"
    assert by_node["node-2"]["outcome"] == "failed" and by_node["node-2"]["error"]
    assert get(a, f"/{name}").text == "big"
    assert (get(b, f"/{name}").text, get(b, f"/{name}").headers["x-cweb-node"]) == ("small", "node-2")
    view = nodes_view(a)
    assert view["node-1"]["modules"][name] == second["module_hash"]
    assert wait_for(lambda: nodes_view(a)["node-2"]["modules"].get(name) == first["module_hash"], 10)
    # The CLI says so too (a redeploy: unchanged here, node-2 tries and fails again).
    source = a.data_dir.parent / "big.c"
    source.write_text(big)
    run = cli(a, "deploy", str(source))
    assert run.returncode == 0, run.stderr
    assert "node-1 unchanged" in run.stdout and "node-2 failed" in run.stdout, run.stdout
    assert "node-2: failed:" in run.stderr and "keeps its previous version" in run.stderr, run.stderr


def test_a_node_that_starts_later_serves_every_module_before_it_is_healthy(cluster) -> None:
    a = cluster(1)
    names = [unique("late") for _ in range(2)]
    hashes = {n: deploy(a, route_module(n, f"/{n}", n))["module_hash"] for n in names}
    b = cluster(2)  # returns once /healthz answers 200
    for n in names:
        r = get(b, f"/{n}")
        assert (r.status_code, r.text, r.headers["x-cweb-node"]) == (200, n, "node-2")
    assert nodes_view(a)["node-2"]["modules"] == hashes or wait_for(
        lambda: nodes_view(a)["node-2"]["modules"] == hashes, 5)


def test_rollback_and_removal_reach_every_node(cluster) -> None:
    a, b = cluster(1), cluster(2)
    name = unique("rb")
    v1 = deploy(a, route_module(name, f"/{name}", "one"))
    deploy(a, route_module(name, f"/{name}", "two"))
    with b.client(headers=AUTH) as c:
        r = c.post(f"/modules/{name}/rollback", json={"module_hash": v1["module_hash"]})
    assert r.status_code == 200, r.text
    documented(schemas.RollbackResult, r.json())
    assert {n["node"]: n["outcome"] for n in r.json()["nodes"]} == {"node-1": "swapped", "node-2": "swapped"}
    assert get(a, f"/{name}").text == "one" and get(b, f"/{name}").text == "one"
    with b.client(headers=AUTH) as c:
        r = c.delete(f"/modules/{name}")
    assert r.status_code == 200, r.text
    documented(schemas.Removed, r.json())
    assert {n["node"]: n["outcome"] for n in r.json()["nodes"]} == {"node-1": "removed", "node-2": "removed"}
    assert get(a, f"/{name}").status_code == 404 and get(b, f"/{name}").status_code == 404
    with a.client(headers=AUTH) as c:
        assert c.delete(f"/modules/{name}").status_code == 404


async def _chat(a: Server, b: Server) -> None:
    ws_a = await websockets.connect(a.url.replace("http", "ws") + "/chat/ws")
    ws_b = await websockets.connect(b.url.replace("http", "ws") + "/chat/ws")
    assert ws_b.response.headers["x-cweb-node"] == "node-2"
    assert ws_b.response.headers["x-cweb-forwarded-to"] == "node-1"
    async with ws_a, ws_b:
        joined = [await asyncio.wait_for(ws_a.recv(), 10) for _ in range(2)]  # itself, then b
        assert joined[0].endswith("joined") and joined[1].endswith("joined") and joined[0] != joined[1]
        await ws_b.send("hello from node-2")
        got = await asyncio.wait_for(ws_a.recv(), 10)
        assert got.endswith(": hello from node-2"), got
        await ws_a.send("hello from node-1")
        seen = []
        while not (seen and seen[-1].endswith(": hello from node-1")):
            seen.append(await asyncio.wait_for(ws_b.recv(), 10))
        assert any(m.endswith("joined") for m in seen)  # b saw its own join announced too


def test_placement_one_forwards_routes_and_sockets_to_the_owner_and_moves_when_it_dies(cluster) -> None:
    a, b = cluster(1), cluster(2)
    chat = (EXAMPLES / "chat.c").read_text()
    run = cli(a, "--json", "deploy", "--placement", "one", str(EXAMPLES / "chat.c"))
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["placement"] == "one"
    assert {n["node"]: n["outcome"] for n in answer["nodes"]} == {"node-1": "swapped", "node-2": "forwarded"}
    page = get(b, "/chat")
    assert page.status_code == 200 and "WebSocket" in page.text
    assert page.headers["x-cweb-node"] == "node-2" and page.headers["x-cweb-forwarded-to"] == "node-1"
    # Rows are written on every change (and heartbeat): node-1's is current by now.
    view = nodes_view(b)
    assert "chat" in view["node-1"]["modules"] and view["node-2"]["forwards"] == {"chat": "node-1"}
    with b.client(headers=AUTH) as c:
        listed = documented(schemas.ModuleInfo, c.get("/modules/chat").json())
    assert (listed["state"], listed["node"], listed["module_hash"]) == ("forwarded", "node-1", answer["module_hash"])
    asyncio.run(_chat(a, b))
    # A redeploy without the parameter keeps the placement.
    again = deploy(a, chat)
    assert again["placement"] == "one" and again["noop"]
    # The owner dies: after its heartbeat expires, node-2 serves the module itself.
    a.stop(9)
    assert wait_for(lambda: get(b, "/chat").status_code == 200
                    and "x-cweb-forwarded-to" not in get(b, "/chat").headers, 30, 0.5)
    assert nodes_view(b)["node-2"]["modules"].get("chat") == answer["module_hash"]

    async def alone() -> None:
        async with websockets.connect(b.url.replace("http", "ws") + "/chat/ws") as ws:
            assert (await asyncio.wait_for(ws.recv(), 10)).endswith("joined")
            assert "x-cweb-forwarded-to" not in ws.response.headers

    asyncio.run(alone())


def test_a_node_the_deploy_cannot_call_follows_the_notification(cluster) -> None:
    # node-2 announces a URL nobody listens on: the deploy's calls to it fail,
    # and it still swaps, from the registry's notification on cweb_modules.
    closed = free_port()
    a, b = cluster(1), cluster(2, CWEB_NODE_URL=f"http://127.0.0.1:{closed}")
    name = unique("notified")
    answer = deploy(a, route_module(name, f"/{name}", "told"))
    by_node = {n["node"]: n for n in answer["nodes"]}
    assert by_node["node-1"]["outcome"] == "swapped"
    assert by_node["node-2"]["outcome"] == "unreachable" and by_node["node-2"]["error"]
    assert wait_for(lambda: get(b, f"/{name}").text == "told", 15, 0.2)
    assert wait_for(lambda: nodes_view(a)["node-2"]["modules"].get(name) == answer["module_hash"], 10)
