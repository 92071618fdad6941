"""The build farm under load: cold deploys of distinct modules with 1, 2 and
3 builder services, queue time under a burst, and the cost of joining a
compile in flight.

    .venv/bin/python bench/farm.py [--burst 12] [--builders 1,2,3] [--slots 1]

For each builder count: that many `python -m builder` processes on loopback
(each with `--slots` build slots, default 1, so the count is the farm's
parallelism), one `python -m api` with CWEB_BUILDER_URL listing them all,
all on one fresh store. Then:

- burst: `--burst` distinct modules deployed at once (one thread each); the
  wall time gives cold deploys per second, each answer's round trip its
  latency (p50/p99), its `build.queue_ms` the time it waited for a builder,
  its `build.builder` which builder compiled it;
- join: five deploys at once of one new source: the one that compiled and
  the four that joined it, round trips side by side (the join's cost is the
  difference), plus one cache-hit redeploy for reference.

Prints a Markdown table and writes bench/farm-results.json (git-ignored).
Every process runs in its own session and is stopped at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ is sys.path[0], where http.py would shadow the
# standard library's http: the repository root goes there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == _ROOT / "bench":
    sys.path[0] = str(_ROOT)
elif str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import httpx  # noqa: E402

from bench.server import ROOT, free_port, start_cweb, stop_cweb, wait_healthy  # noqa: E402

MODULE = """#include <cweb.h>
#include <stdio.h>
static int h(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", "TAG");
    res->status = HTTP_200_OK;
    return 0;
}
export module_t config = {
    .name = "NAME",
    .size = 1,
    .routes = {{"/NAME", "GET", h, NONE}},
};
"""


def source(tag: str) -> bytes:
    name = f"farm_{tag}"
    return MODULE.replace("NAME", name).replace("TAG", tag).encode()


def start_builder(store: Path, slots: int, log_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    env.update(PYTHONPATH=str(ROOT), CWEB_UNSAFE_BUILDS="1", CWEB_BUILD_SLOTS=str(slots))
    log_path = log_dir / f"builder-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "builder", "--port", str(port), "--store", str(store)],
                                cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, 90, "builder", log_path)
    return proc, url


def deploy(url: str, body: bytes) -> tuple[float, dict]:
    with httpx.Client(base_url=url, timeout=300, trust_env=False) as c:
        t0 = time.perf_counter()
        r = c.post("/mgnt", files={"code": ("farm.c", body, "text/x-c")})
        ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"deploy refused {r.status_code}: {r.text[:500]}")
    return ms, r.json()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


def run_farm(n_builders: int, burst: int, slots: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="cweb-farm-bench-") as tmp:
        data = Path(tmp) / "data"
        store = data / "store"
        store.mkdir(parents=True)
        builders = [start_builder(store, slots, Path(tmp)) for _ in range(n_builders)]
        api = None
        try:
            api, url = start_cweb(data, env={"CWEB_BUILDER_URL": ",".join(u for _, u in builders)}, timeout=120)
            with httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
                deadline = time.monotonic() + 60
                while len(c.get("/builds").json()["builders"]) < n_builders:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the api did not find every builder")
                    time.sleep(0.2)
            deploy(url, source("warm" + uuid.uuid4().hex[:8]))  # the glue object is compiled once per builder store
            tags = [uuid.uuid4().hex[:10] for _ in range(burst)]
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(burst) as pool:
                answers = list(pool.map(lambda t: deploy(url, source(t)), tags))
            wall = time.perf_counter() - t0
            latency = [ms for ms, _ in answers]
            queue = [a["build"]["queue_ms"] for _, a in answers]
            compile_ms = [a["build"]["compile_ms"] for _, a in answers]
            used: dict[str, int] = {}
            for _, a in answers:
                used[a["build"]["builder"]] = used.get(a["build"]["builder"], 0) + 1
            same = source("join" + uuid.uuid4().hex[:8])
            with concurrent.futures.ThreadPoolExecutor(5) as pool:
                joins = list(pool.map(lambda _: deploy(url, same), range(5)))
            compiled = [ms for ms, a in joins if not a["build"]["joined"]]
            joined = [ms for ms, a in joins if a["build"]["joined"]]
            hit_ms, hit = deploy(url, same)
            return {
                "builders": n_builders, "slots_each": slots, "burst": burst,
                "wall_s": round(wall, 2), "deploys_per_s": round(burst / wall, 2),
                "latency_p50_ms": pct(latency, 0.5), "latency_p99_ms": pct(latency, 0.99),
                "queue_p50_ms": pct(queue, 0.5), "queue_max_ms": round(max(queue), 1),
                "compile_p50_ms": pct(compile_ms, 0.5), "builds_per_builder": sorted(used.values(), reverse=True),
                "join": {"compiled_ms": round(compiled[0], 1) if compiled else None,
                         "joined_median_ms": round(statistics.median(joined), 1) if joined else None,
                         "joined_count": len(joined), "cache_hit_ms": round(hit_ms, 1),
                         "cache_hit_builder": hit["build"]["builder"]},
            }
        finally:
            if api is not None:
                stop_cweb(api)
            for proc, _ in builders:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench/farm.py", description=__doc__.splitlines()[0])
    p.add_argument("--burst", type=int, default=12)
    p.add_argument("--builders", default="1,2,3")
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "farm-results.json"))
    args = p.parse_args(argv)
    results = [run_farm(int(n), args.burst, args.slots) for n in args.builders.split(",")]
    Path(args.out).write_text(json.dumps(results, indent=1))
    print("| builders | deploys/s | deploy p50 / p99 ms | queue p50 / max ms | compile p50 ms | builds per builder |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['builders']} × {r['slots_each']} slot | {r['deploys_per_s']} | {r['latency_p50_ms']} / {r['latency_p99_ms']} | "
              f"{r['queue_p50_ms']} / {r['queue_max_ms']} | {r['compile_p50_ms']} | {r['builds_per_builder']} |")
    print()
    print("| builders | compiling deploy ms | 4 joined deploys, median ms | cache-hit redeploy ms |")
    print("|---|---|---|---|")
    for r in results:
        j = r["join"]
        print(f"| {r['builders']} | {j['compiled_ms']} | {j['joined_median_ms']} ({j['joined_count']} joined) | {j['cache_hit_ms']} |")


if __name__ == "__main__":
    main()
