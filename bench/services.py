"""Benchmark of the module services: cache latency from C, shared-database
writes from two modules, and rollback end to end.

    .venv/bin/python -m bench.services            # starts its own server
    .venv/bin/python -m bench.services --url http://127.0.0.1:8080

Cache numbers are measured inside C (clock_gettime around every single
cweb_cache_get/set, in a route that loops N times and reports percentiles),
first in one worker, then in two workers (two modules) at the same time.
Database numbers are autocommit INSERTs through ctx->database from two
modules at once, several request threads each. Rollback is the wall time of
POST /modules/{name}/rollback plus the first request answered by the old
version. Prints a table; not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Server, unique  # noqa: E402
from tests.integration.test_services import service_module  # noqa: E402

CACHE_OPS = 1_000_000
CACHE_VALUE_BYTES = 64
CACHE_KEYS = 10_000
DB_THREADS_PER_MODULE = 4
DB_REQUESTS_PER_THREAD = 10
DB_ROWS_PER_REQUEST = 200
ROLLBACKS = 10


def deploy(client: httpx.Client, source: str) -> dict:
    r = client.post("/mgnt", files={"code": ("bench.c", source.encode(), "text/x-c")})
    r.raise_for_status()
    return r.json()


def cache_bench(client: httpx.Client, name: str, prefix: str) -> dict:
    r = client.get(f"/{name}/cache/bench", params={"n": CACHE_OPS, "size": CACHE_VALUE_BYTES, "keys": CACHE_KEYS, "prefix": prefix})
    r.raise_for_status()
    return r.json()


def concurrently(fns: list) -> list:
    results: list = [None] * len(fns)

    def run(i: int) -> None:
        results[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def bench_cache(url: str, a: str, b: str) -> list[tuple[str, str]]:
    rows = []
    with httpx.Client(base_url=url, timeout=120) as c:
        cache_bench(c, a, "warm")
        one = cache_bench(c, a, "one")
    rows.append(("cache get p50 / p99, 1 worker", f"{one['get_p50_ns'] / 1000:.2f} / {one['get_p99_ns'] / 1000:.2f} µs"))
    rows.append(("cache set p50 / p99, 1 worker", f"{one['set_p50_ns'] / 1000:.2f} / {one['set_p99_ns'] / 1000:.2f} µs"))

    def run(name: str, prefix: str):
        def go() -> dict:
            with httpx.Client(base_url=url, timeout=120) as c:
                return cache_bench(c, name, prefix)
        return go

    both = concurrently([run(a, "two-a"), run(b, "two-b")])
    for label, key in (("get", "get"), ("set", "set")):
        p50 = max(r[f"{key}_p50_ns"] for r in both) / 1000
        p99 = max(r[f"{key}_p99_ns"] for r in both) / 1000
        rows.append((f"cache {label} p50 / p99, 2 workers at once", f"{p50:.2f} / {p99:.2f} µs (worst worker)"))
        ops = sum(CACHE_OPS / (r[f"{key}_total_ns"] / 1e9) for r in both)
        rows.append((f"cache {label} throughput, 2 workers", f"{ops / 1e6:.2f} M ops/s"))
    return rows


def bench_db(url: str, a: str, b: str) -> list[tuple[str, str]]:
    table = unique("bench")
    errors: list[str] = []

    def writer(name: str):
        def go() -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                for _ in range(DB_REQUESTS_PER_THREAD):
                    r = c.post(f"/{name}/db/insert", params={"table": table, "n": DB_ROWS_PER_REQUEST})
                    if r.status_code != 200:
                        errors.append(r.text)
        return go

    with httpx.Client(base_url=url, timeout=120) as c:
        c.post(f"/{a}/db/insert", params={"table": table, "n": 1}).raise_for_status()
    t0 = time.perf_counter()
    concurrently([writer(n) for n in (a, b) for _ in range(DB_THREADS_PER_MODULE)])
    elapsed = time.perf_counter() - t0
    rows = 2 * DB_THREADS_PER_MODULE * DB_REQUESTS_PER_THREAD * DB_ROWS_PER_REQUEST
    return [
        ("sqlite autocommit inserts, 2 modules x 4 threads", f"{rows / elapsed:,.0f} rows/s ({rows} rows, {len(errors)} errors)"),
    ]


def bench_rollback(url: str) -> list[tuple[str, str]]:
    name = unique("rbbench")
    with httpx.Client(base_url=url, timeout=120) as c:
        h1 = deploy(c, service_module(name, "v1"))["module_hash"]
        h2 = deploy(c, service_module(name, "v2"))["module_hash"]
        times, server_ms = [], []
        for i in range(ROLLBACKS):
            target, tag = (h1, "v1") if i % 2 == 0 else (h2, "v2")
            t0 = time.perf_counter()
            r = c.post(f"/modules/{name}/rollback", json={"module_hash": target})
            r.raise_for_status()
            served = c.get(f"/{name}/version").text
            times.append((time.perf_counter() - t0) * 1000)
            server_ms.append(r.json()["deploy_ms"])
            assert served == tag, (served, tag)
            time.sleep(1.0)  # let the agent get a spare worker ready, as between real deploys
    return [
        ("rollback end to end (request -> old body served)", f"p50 {statistics.median(times):.1f} ms, max {max(times):.1f} ms"),
        ("rollback inside the server (deploy_ms)", f"p50 {statistics.median(server_ms):.1f} ms, max {max(server_ms):.1f} ms"),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server (default: start one in a temporary data dir)")
    args = p.parse_args(argv)
    server = None
    url = args.url
    if not url:
        server = Server(Path(tempfile.mkdtemp(prefix="cweb-bench-")) / "data").start()
        url = server.url
    try:
        a, b = unique("bencha"), unique("benchb")
        with httpx.Client(base_url=url, timeout=120) as c:
            deploy(c, service_module(a))
            deploy(c, service_module(b))
        rows = bench_cache(url, a, b) + bench_db(url, a, b) + bench_rollback(url)
    finally:
        if server is not None:
            server.stop()
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}}  result")
    print(f"{'-' * width}  {'-' * 40}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
