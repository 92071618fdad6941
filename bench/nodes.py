"""Deploy-to-all-nodes time and the cost of forwarding, on N local nodes.

Starts N `python -m api` nodes on one PostgreSQL (--database-url, e.g. a
`docker run -p 127.0.0.1:5433:5432 -e POSTGRES_PASSWORD=pw cweb-postgres:dev`,
user cweb, database cweb) and one store directory, then:

- cold deploys: a source never built before, sent to node 1: the answer's
  `deploy_ms` (build, load on every node, record, swap on every node), each
  node's own `ms`, and the client's round trip until every node answers the
  new body;
- warm deploys: two artifacts already built, deployed in turn (a cache hit
  compiles nothing): the time the cluster itself adds to a swap;
- forwarding: a placement-one module on node 1, the same route asked
  sequentially on node 1 (its own worker) and on node 2 (forwarded to node 1).

    python -m bench.nodes --database-url postgresql://cweb:pw@127.0.0.1:5433/cweb
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.server import start_cweb, stop_cweb

KEY = "bench-nodes-key"


def source(name: str, tag: str) -> bytes:
    return f"""
#include <cweb.h>
static int hello(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {{
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", "{tag}");
    res->status = HTTP_200_OK;
    return 0;
}}
export module_t config = {{
    .name = "{name}", .author = "bench",
    .routes = {{ {{"/{name}", "GET", hello, NONE}} }}, .size = 1,
}};
""".encode()


def deploy(c: httpx.Client, code: bytes, **params: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = c.post("/mgnt", params=params, files={"code": ("m.c", code, "text/x-c")})
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"deploy refused: {r.status_code} {r.text[:300]}")
    return r.json(), ms


def all_serve(urls: list[str], path: str, body: str, t0: float, timeout: float = 30) -> float:
    """ms from t0 until every node answers body on path."""
    pending = set(urls)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for u in list(pending):
            if httpx.get(u + path, timeout=5, trust_env=False).text == body:
                pending.discard(u)
    if pending:
        raise RuntimeError(f"{sorted(pending)} did not serve {body!r} within {timeout:g} s")
    return (time.perf_counter() - t0) * 1000


def summary(values: list[float]) -> dict:
    values = sorted(values)
    return {"n": len(values), "median": round(statistics.median(values), 1), "min": round(values[0], 1),
            "max": round(values[-1], 1)}


def latency(url: str, n: int) -> dict:
    times = []
    with httpx.Client(timeout=10, trust_env=False) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.get(url)
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
    times.sort()
    return {"n": n, "p50_ms": round(times[n // 2], 3), "p99_ms": round(times[int(n * 0.99)], 3)}


def run(database_url: str, nodes: int, deploys: int, requests: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cweb-bench-nodes-"))
    store = work / "store"
    procs, urls = [], []
    try:
        for i in range(1, nodes + 1):
            (work / f"n{i}").mkdir()
            proc, url = start_cweb(work / f"n{i}" / "data", timeout=180, env={
                "CWEB_DATABASE_URL": database_url, "CWEB_STORE_DIR": str(store), "CWEB_API_KEY": KEY,
                "CWEB_NODE_ID": f"node-{i}"})
            procs.append(proc)
            urls.append(url)
        c = httpx.Client(base_url=urls[0], timeout=300, headers={"authorization": f"Bearer {KEY}"}, trust_env=False)
        name = f"b_{uuid.uuid4().hex[:8]}"
        cold, cold_nodes, cold_swaps, cold_all = [], [], [], []
        for i in range(deploys):
            tag = f"cold-{i}"
            t0 = time.perf_counter()
            answer, ms = deploy(c, source(name, tag))
            cold_all.append(all_serve(urls, f"/{name}", tag, t0))
            cold.append(answer["deploy_ms"])
            cold_nodes += [n["prepare_ms"] for n in answer["nodes"]]
            cold_swaps += [n["swap_ms"] for n in answer["nodes"]]
        warm, warm_client, warm_nodes, warm_swaps = [], [], [], []
        for i in range(deploys):
            tag = f"cold-{i % 2}"
            answer, ms = deploy(c, source(name, tag))
            assert answer["cache_hit"], answer
            warm.append(answer["deploy_ms"])
            warm_client.append(ms)
            warm_nodes += [n["prepare_ms"] for n in answer["nodes"]]
            warm_swaps += [n["swap_ms"] for n in answer["nodes"]]
        one = f"o_{uuid.uuid4().hex[:8]}"
        deploy(c, source(one, "one"), placement="one")
        direct = latency(f"{urls[0]}/{one}", requests)
        forwarded = latency(f"{urls[1]}/{one}", requests) if nodes > 1 else None
        c.close()
        return {
            "nodes": nodes,
            "cold_deploy_ms": summary(cold), "cold_per_node_prepare_ms": summary(cold_nodes),
            "cold_per_node_swap_ms": summary(cold_swaps),
            "cold_until_every_node_serves_ms": summary(cold_all),
            "warm_deploy_ms": summary(warm), "warm_client_ms": summary(warm_client),
            "warm_per_node_prepare_ms": summary(warm_nodes), "warm_per_node_swap_ms": summary(warm_swaps),
            "placement_one_direct": direct, "placement_one_forwarded": forwarded,
        }
    finally:
        for proc in procs:
            stop_cweb(proc)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.nodes", description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", required=True, help="a PostgreSQL the nodes share (its tables are created)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--deploys", type=int, default=6)
    p.add_argument("--requests", type=int, default=500)
    args = p.parse_args()
    print(json.dumps(run(args.database_url, args.nodes, args.deploys, args.requests), indent=2))


if __name__ == "__main__":
    main()
