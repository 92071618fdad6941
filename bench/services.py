"""Benchmark of the module services: cache latency from C, database
writes from two modules, and rollback end to end.

    .venv/bin/python -m bench.services            # starts its own server
    .venv/bin/python -m bench.services --url http://127.0.0.1:8080

Cache numbers are measured inside C (clock_gettime around every single
cweb_cache_get/set, in a route that loops N times and reports percentiles),
first in one worker, then in two workers (two modules) at the same time.
The same loop is also run against the cache cweb had before the services
broker (one shared-memory file every worker mapped, SHM_COMMIT), built from
that commit's SDK into a small program: one process, then two at once.
Database numbers are autocommit INSERTs through ctx->database from two
modules at once, several request threads each (each into its own file).
Rollback is the wall time of POST /modules/{name}/rollback plus the first
request answered by the old version. Prints a table; not part of the test
suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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

# Each call is a round trip to the runtime now: fewer of them keep the run short.
CACHE_OPS = 20_000
# The shared-memory cache cweb used before the services broker.
SHM_COMMIT = "e97c336"
SHM_OPS = 1_000_000
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
    with httpx.Client(base_url=url, timeout=300) as c:
        cache_bench(c, a, "warm")
        one = cache_bench(c, a, "one")

    def run(name: str, prefix: str):
        def go() -> dict:
            with httpx.Client(base_url=url, timeout=300) as c:
                return cache_bench(c, name, prefix)
        return go

    both = concurrently([run(a, "two-a"), run(b, "two-b")])
    return cache_rows("after: services broker", one, both, CACHE_OPS)


SHM_HARNESS = r"""
#include "cweb.h"
#include "cweb_internal.h"
#include <time.h>

/* The old container needs these from the glue; the bench never calls them. */
int http_kv_insert(http_kv_store_t *s, const char *k, char *v) { (void)s; (void)k; (void)v; return -1; }
char *http_kv_get(const http_kv_store_t *s, const char *k) { (void)s; (void)k; return NULL; }

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *dir = argv[1], *prefix = argv[2];
    long n = atol(argv[3]), size = atol(argv[4]), keys = atol(argv[5]);
    cweb_services_init(dir);
    uint64_t *set_ns = malloc(sizeof(uint64_t) * (size_t)n), *get_ns = malloc(sizeof(uint64_t) * (size_t)n);
    char *buf = calloc(1, (size_t)size + 1), key[256];
    long misses = 0;
    uint64_t t0 = ns();
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "%s%ld", prefix, i % keys);
        uint64_t a = ns();
        cweb_cache_set(NULL, key, buf, (size_t)size, 0);
        set_ns[i] = ns() - a;
    }
    uint64_t t1 = ns();
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "%s%ld", prefix, i % keys);
        uint64_t a = ns();
        if (cweb_cache_get(NULL, key, buf, (size_t)size) < 0)
            misses++;
        get_ns[i] = ns() - a;
    }
    uint64_t t2 = ns();
    qsort(set_ns, (size_t)n, sizeof(uint64_t), cmp_u64);
    qsort(get_ns, (size_t)n, sizeof(uint64_t), cmp_u64);
    printf("{\"set_p50_ns\":%llu,\"set_p99_ns\":%llu,\"get_p50_ns\":%llu,\"get_p99_ns\":%llu,"
           "\"set_total_ns\":%llu,\"get_total_ns\":%llu,\"misses\":%ld}\n",
           (unsigned long long)set_ns[n / 2], (unsigned long long)set_ns[n * 99 / 100],
           (unsigned long long)get_ns[n / 2], (unsigned long long)get_ns[n * 99 / 100],
           (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1), misses);
    return 0;
}
"""


def build_shm_harness(folder: Path) -> Path:
    """The pre-broker SDK's cache (SHM_COMMIT) compiled into a program."""
    for name in ("cweb.h", "cweb_internal.h", "cweb_frame.h", "cweb_services.c"):
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{SHM_COMMIT}:builder/sdk/{name}"], check=True, capture_output=True).stdout
        (folder / name).write_bytes(blob)
    (folder / "harness.c").write_text(SHM_HARNESS)
    exe = folder / "shm-bench"
    subprocess.run(
        ["gcc", "-std=gnu11", "-O2", "-I", str(folder), "-o", str(exe), str(folder / "harness.c"), str(folder / "cweb_services.c"),
         "-lssl", "-lcrypto", "-lsqlite3", "-ljansson", "-lpthread", "-lm"],
        check=True,
    )
    return exe


def bench_cache_shm() -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="cweb-shm-bench-") as tmp:
        folder = Path(tmp)
        exe = build_shm_harness(folder)
        data = folder / "data"
        data.mkdir()

        def run(prefix: str, n: int = SHM_OPS):
            def go() -> dict:
                out = subprocess.run([str(exe), str(data), prefix, str(n), str(CACHE_VALUE_BYTES), str(CACHE_KEYS)], check=True, capture_output=True, text=True).stdout
                return json.loads(out)
            return go

        run("warm", 10_000)()
        one = run("one")()
        both = concurrently([run("two-a"), run("two-b")])
    return cache_rows("before: shared memory", one, both, SHM_OPS)


def cache_rows(label: str, one: dict, both: list[dict], ops: int) -> list[tuple[str, str]]:
    rows = []
    for op in ("get", "set"):
        rows.append((f"{label}: cache {op} p50 / p99, 1 worker", f"{one[f'{op}_p50_ns'] / 1000:.2f} / {one[f'{op}_p99_ns'] / 1000:.2f} µs"))
        rows.append((f"{label}: cache {op} throughput, 1 worker", f"{ops / (one[f'{op}_total_ns'] / 1e9):,.0f} ops/s"))
    for op in ("get", "set"):
        p50 = max(r[f"{op}_p50_ns"] for r in both) / 1000
        p99 = max(r[f"{op}_p99_ns"] for r in both) / 1000
        rows.append((f"{label}: cache {op} p50 / p99, 2 workers at once", f"{p50:.2f} / {p99:.2f} µs (worst worker)"))
        total = sum(ops / (r[f"{op}_total_ns"] / 1e9) for r in both)
        rows.append((f"{label}: cache {op} throughput, 2 workers", f"{total:,.0f} ops/s"))
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
        ("sqlite autocommit inserts, 2 modules x 4 threads (a file each)", f"{rows / elapsed:,.0f} rows/s ({rows} rows, {len(errors)} errors)"),
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
        rows = bench_cache_shm() + bench_cache(url, a, b) + bench_db(url, a, b) + bench_rollback(url)
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
