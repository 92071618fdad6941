"""What the worker sandbox costs: per worker start and per cache-hit deploy.

    python -m bench.sandbox [--rounds 15]

- worker start: the worker's interpreter importing runtime.worker, run
  through the sandbox command the agent uses (bubblewrap, seccomp filter
  loaded by bwrap) and bare, interleaved; median wall time of each.
- cache-hit deploy: two servers in one run, one with bubblewrap and one
  with CWEB_WORKER_SANDBOX=none (CWEB_UNSAFE_WORKERS=1); each deploys two
  variants A and B of a module alternately (every deploy after the first
  two is a cache hit that loads the artifact into the warm spare, runs
  onload and swaps); median of the server's own deploy_ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.server import start_cweb, stop_cweb
from runtime import limits, sandbox

ROOT = Path(__file__).resolve().parent.parent

MODULE = """#include <cweb.h>
static int h(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", "TAG");
    res->status = HTTP_200_OK;
    return 0;
}
export module_t config = {.name = "bench_sandbox", .author = "bench", .routes = {{"/bench_sandbox", "GET", h, NONE}}, .size = 1};
"""


def worker_start(rounds: int) -> dict:
    box = sandbox.choose(str(ROOT), network=False, unsafe=True)
    if box.kind != "bubblewrap":
        raise SystemExit(f"bubblewrap does not work here (sandbox: {box.kind})")
    wl = limits.WorkerLimits.from_env({})
    wl.use_bwrap(True)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    times: dict[str, list[float]] = {"bubblewrap": [], "bare": []}
    for _ in range(rounds):
        fd = wl.bwrap_filter()
        try:
            argv = box.command([sys.executable, "-c", "import runtime.worker"], fd)
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, pass_fds=(fd,), check=True, cwd=str(ROOT))
            times["bubblewrap"].append(time.perf_counter() - t0)
        finally:
            os.close(fd)
        t0 = time.perf_counter()
        subprocess.run([box.python, "-c", "import runtime.worker"], env=env, check=True, cwd=str(ROOT))
        times["bare"].append(time.perf_counter() - t0)
    return {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()}


def cache_hit_deploys(rounds: int) -> dict:
    out = {}
    servers = {}
    tmp = Path(tempfile.mkdtemp(prefix="cweb-bench-sandbox-"))
    try:
        for kind, env in (("bubblewrap", {}), ("none", {"CWEB_WORKER_SANDBOX": "none", "CWEB_UNSAFE_WORKERS": "1"})):
            (tmp / kind).mkdir()
            servers[kind] = start_cweb(tmp / kind / "data", env=env)
        for kind, (_, url) in servers.items():
            with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
                assert c.get("/healthz").json()["workers"] == kind, kind
        samples: dict[str, list[float]] = {k: [] for k in servers}
        for i in range(rounds + 2):
            for kind, (_, url) in servers.items():
                tag = "A" if i % 2 == 0 else "B"
                with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
                    r = c.post("/mgnt", files={"code": ("m.c", MODULE.replace("TAG", tag).encode(), "text/x-c")})
                    r.raise_for_status()
                    if i >= 2:
                        samples[kind].append(r.json()["deploy_ms"])
                time.sleep(0.3)  # the next spare starts after each deploy
        for kind, values in samples.items():
            out[kind] = round(statistics.median(values), 1)
    finally:
        for proc, _ in servers.values():
            stop_cweb(proc)
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sandbox")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    start = worker_start(args.rounds)
    print(f"worker start (interpreter + imports), median of {args.rounds}: "
          f"bubblewrap {start['bubblewrap']} ms, bare {start['bare']} ms")
    deploys = cache_hit_deploys(args.rounds)
    print(f"cache-hit deploy (deploy_ms), median of {args.rounds}: "
          f"bubblewrap {deploys['bubblewrap']} ms, none {deploys['none']} ms")


if __name__ == "__main__":
    main()
