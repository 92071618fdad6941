#!/usr/bin/env python3
"""Crash containment figures: how fast a crashed module serves again, and
whether a healthy module notices.

A module has /crash (a NULL write: SIGSEGV) and /ok. For each crash the
clock starts when the client has the 502 and stops when /ok answers 200
again (polling every 2 ms; a /ok sent while the module restarts waits for
it, which is what a real client sees). Meanwhile a thread keeps GETting a
route of another, healthy module and counts every answer that is not 200.

A module that crashes CRASH_LIMIT (5) times in 60 s is quarantined, so every
4 crashes the module is redeployed as a new artifact (a generation number
is compiled into /ok's answer) with a fresh crash count.

    .venv/bin/python bench/crash.py              # starts its own server, 100 crashes
    .venv/bin/python bench/crash.py --crashes 20 --url http://127.0.0.1:8080 [--key KEY]

`run(cweb_url, quick)` is the entry point for bench/run.py. Every loop is
bounded in count and time; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ is sys.path[0], where bench/http.py would shadow the
# standard library's `http` (which httpx imports).
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import httpx  # noqa: E402

from bench.server import free_port, start_cweb, stop_cweb  # noqa: E402

CRASHES_PER_GENERATION = 4  # one below api.modules.supervisor.CRASH_LIMIT
RECOVERY_LIMIT_S = 30.0
POLL_S = 0.002

CRASHY = """
#include <cweb.h>
static int crash(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req; (void)res;
    *(volatile int *)0 = 1;
    return 0;
}
static int ok(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "ok %d", GENERATION);
    res->status = HTTP_200_OK;
    return 0;
}
export module_t config = {
    .name = "NAME", .author = "bench",
    .routes = { {"PREFIX/crash", "GET", crash, NONE}, {"PREFIX/ok", "GET", ok, NONE} }, .size = 2,
};
"""

HEALTHY = """
#include <cweb.h>
static int alive(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "alive");
    res->status = HTTP_200_OK;
    return 0;
}
export module_t config = {
    .name = "NAME", .author = "bench",
    .routes = { {"PREFIX/alive", "GET", alive, NONE} }, .size = 1,
};
"""


def _source(template: str, name: str, prefix: str, generation: int = 0) -> bytes:
    src = template.replace("NAME", name).replace("PREFIX", prefix)
    return f"#define GENERATION {generation}\n{src}".encode()


def _deploy(c: httpx.Client, source: bytes) -> dict:
    r = c.post("/mgnt", files={"code": ("bench.c", source, "text/x-c")})
    if r.status_code != 200:
        raise RuntimeError(f"deploy refused: {r.status_code} {r.text[:300]}")
    return r.json()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(url: str, crashes: int = 100, key: str | None = None, verify: object = True) -> dict:
    """Crash a module `crashes` times; recovery times and the healthy route's errors."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    tag = uuid.uuid4().hex[:8]
    crashy, prefix = f"crashy_{tag}", f"/bench_crash_{tag}"
    healthy, healthy_path = f"healthy_{tag}", f"/bench_healthy_{tag}/alive"
    recovery_ms: list[float] = []
    to_502_ms: list[float] = []
    by_ordinal: dict[int, list[float]] = {}  # nth crash of a generation -> recovery ms
    extra_errors = 0  # non-200 answers on /ok while recovering (other than waiting)
    extra_codes: dict[str, int] = {}
    stop = threading.Event()
    healthy_stats = {"requests": 0, "errors": 0, "samples": []}

    def hammer() -> None:
        with httpx.Client(base_url=url, timeout=10, verify=verify) as hc:  # type: ignore[arg-type]
            deadline = time.monotonic() + 600
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    code = hc.get(healthy_path).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                healthy_stats["requests"] += 1
                if code != 200:
                    healthy_stats["errors"] += 1
                    if len(healthy_stats["samples"]) < 10:
                        healthy_stats["samples"].append(code)

    with httpx.Client(base_url=url, timeout=60, headers=headers, verify=verify) as c:  # type: ignore[arg-type]
        _deploy(c, _source(HEALTHY, healthy, f"/bench_healthy_{tag}"))
        generation = 0
        _deploy(c, _source(CRASHY, crashy, prefix, generation))
        t = threading.Thread(target=hammer, daemon=True)
        t.start()
        started = time.monotonic()
        try:
            for i in range(crashes):
                if i and i % CRASHES_PER_GENERATION == 0:
                    generation += 1
                    _deploy(c, _source(CRASHY, crashy, prefix, generation))
                t0 = time.perf_counter()
                r = c.get(f"{prefix}/crash")
                t_502 = time.perf_counter()
                if r.status_code != 502:
                    raise RuntimeError(f"crash {i}: expected 502, got {r.status_code} {r.text[:200]}")
                to_502_ms.append((t_502 - t0) * 1000)
                limit = time.monotonic() + RECOVERY_LIMIT_S
                while True:
                    got = c.get(f"{prefix}/ok")
                    if got.status_code == 200:
                        break
                    extra_errors += 1
                    code = f"{got.status_code} {got.json().get('error', '') if got.headers.get('content-type') == 'application/json' else ''}"
                    extra_codes[code] = extra_codes.get(code, 0) + 1
                    if time.monotonic() > limit:
                        raise RuntimeError(f"crash {i}: /ok not 200 within {RECOVERY_LIMIT_S} s ({got.status_code} {got.text[:200]})")
                    time.sleep(POLL_S)
                recovery_ms.append((time.perf_counter() - t_502) * 1000)
                by_ordinal.setdefault(i % CRASHES_PER_GENERATION + 1, []).append(recovery_ms[-1])
        finally:
            stop.set()
            t.join(15)
        elapsed = time.monotonic() - started
        for name in (crashy, healthy):
            c.delete(f"/modules/{name}")
    return {
        "crashes": len(recovery_ms),
        "recovery_p50_ms": round(statistics.median(recovery_ms), 2),
        "recovery_p99_ms": round(_percentile(recovery_ms, 0.99), 2),
        "recovery_max_ms": round(max(recovery_ms), 2),
        "recovery_mean_ms": round(statistics.fmean(recovery_ms), 2),
        "crash_to_502_p50_ms": round(statistics.median(to_502_ms), 2),
        "recovery_p50_ms_by_nth_crash": {n: round(statistics.median(v), 2) for n, v in sorted(by_ordinal.items())},
        "non_200_while_recovering": extra_errors,
        "non_200_while_recovering_codes": extra_codes,
        "healthy_requests": healthy_stats["requests"],
        "healthy_errors": healthy_stats["errors"],
        "healthy_error_samples": healthy_stats["samples"],
        "elapsed_s": round(elapsed, 1),
    }


def workloads(m: dict) -> list[dict]:
    return [
        {
            "name": "crash_recovery", "group": "crash", "metric": "ms", "value": m["recovery_p50_ms"],
            "p50_ms": m["recovery_p50_ms"], "p99_ms": m["recovery_p99_ms"], "errors": m["non_200_while_recovering"],
            "description": f"from a segfault's 502 until the module's /ok answers 200 again, over {m['crashes']} crashes",
        },
        {
            "name": "crash_neighbour_errors", "group": "crash", "metric": "errors", "value": m["healthy_errors"],
            "errors": m["healthy_errors"], "requests": m["healthy_requests"],
            "description": "non-200 answers on a healthy module's route while another module crashed repeatedly (goal 0)",
        },
    ]


def run(cweb_url: str, quick: bool = False) -> list[dict]:
    """bench/run.py's entry point."""
    return workloads(measure(cweb_url, 20 if quick else 100))


# ---- standalone: start a server of our own ------------------------------


def _start_server(data_dir: Path, port: int, key: str) -> subprocess.Popen:
    proc, _ = start_cweb(data_dir, port=port, env={"CWEB_API_KEY": key})
    return proc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crashes", type=int, default=100)
    p.add_argument("--url", help="an already running server (default: start one on a free loopback port)")
    p.add_argument("--key", default=os.environ.get("CWEB_API_KEY"), help="API key for deploys (env CWEB_API_KEY)")
    args = p.parse_args(argv)
    if args.url:
        result = measure(args.url, args.crashes, args.key)
    else:
        with tempfile.TemporaryDirectory(prefix="cweb-crash-bench-") as tmp:
            key = uuid.uuid4().hex
            port = free_port()
            proc = _start_server(Path(tmp) / "data", port, key)
            try:
                result = measure(f"http://127.0.0.1:{port}", args.crashes, key)
            finally:
                stop_cweb(proc)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
