"""Deploy timings: cold deploy against gcc's own time, cache-hit redeploy of
an inactive version, and hot swap under load.

Every variant of the benchmark module is bench/modules/workloads.c with
`#define BENCH_TAG "..."` prepended. The tag is compiled into a route's
answer, so each tag is a different artifact (a mere comment would change
the source hash but not the .so, and deploying the active hash is a no-op).

- cold: a tag never built before, so gcc runs; the server's own `build_ms`
  and `deploy_ms` from the response, the client's round trip, and, for
  comparison, the same gcc command line the builder runs (taken from
  builder.compile.Compiler) timed alone — bare, and inside the sandbox.
- cache hit: deploy A, deploy B, deploy A again...: every deploy after the
  first two is a cache hit that activates an inactive version.
- hot swap: wrk at 64 connections on /b/trivial while the module is
  redeployed between A and B every 0.5 s; wrk's error count must be 0.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import http as wrk

MODULE = Path(__file__).resolve().parent / "modules" / "workloads.c"
SWAP_INTERVAL_S = 0.5


class DeployError(Exception):
    """A deploy the benchmark relies on was refused."""


def module_source(compute_iters: int, tag: str | None = None) -> bytes:
    """workloads.c with the calibrated loop count (and a tag) defined in front."""
    head = f"#define BENCH_COMPUTE_ITERS {compute_iters}ULL\n"
    if tag is not None:
        head += f'#define BENCH_TAG "{tag}"\n'
    return head.encode() + MODULE.read_bytes()


def client(base_url: str) -> httpx.Client:
    # trust_env=False: never route loopback traffic through a proxy from the environment.
    return httpx.Client(base_url=base_url, timeout=120, trust_env=False)


@dataclass
class Deployed:
    response: dict
    client_ms: float


def deploy(c: httpx.Client, source: bytes, filename: str = "workloads.c") -> Deployed:
    """POST /mgnt and insist on a 200."""
    t0 = time.perf_counter()
    r = c.post("/mgnt", files={"code": (filename, source, "text/x-c")})
    client_ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise DeployError(f"deploy refused with {r.status_code}: {r.text[:2000]}")
    return Deployed(r.json(), client_ms)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def glue_object(data_dir: Path) -> Path:
    """The glue object the server's builder links into every module."""
    from builder import compile as compile_mod

    exact = data_dir / "store" / "glue" / f"{compile_mod.sdk_digest()}.o"
    if exact.exists():
        return exact
    found = sorted((data_dir / "store" / "glue").glob("*.o"))
    if not found:
        raise DeployError(f"no glue object under {data_dir / 'store' / 'glue'}; deploy something first")
    return found[-1]


def time_gcc(source: bytes, data_dir: Path, sandboxed: bool) -> float:
    """Milliseconds for the builder's own compile command line on source,
    without the server: bare gcc (sandboxed=False, prlimit dropped) or the
    whole prlimit + bubblewrap + gcc command (sandboxed=True)."""
    from builder import compile as compile_mod
    from builder.local import SOURCE_NAME

    scratch = tempfile.mkdtemp(prefix="cweb-bench-gcc-")
    try:
        (Path(scratch) / SOURCE_NAME).write_bytes(source)
        argv = compile_mod.Compiler(sandboxed).argv(scratch, str(glue_object(data_dir)), "module.so", [SOURCE_NAME], link=True)
        if not sandboxed:
            argv = argv[argv.index("--") + 1:]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C", "TMPDIR": scratch}
        t0 = time.perf_counter()
        run = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, timeout=120)
        elapsed = (time.perf_counter() - t0) * 1000
        if run.returncode != 0:
            raise DeployError(f"gcc failed: {run.stdout.decode(errors='replace')[-2000:]}")
        return elapsed
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def cold(base_url: str, data_dir: Path, compute_iters: int, samples: int, sandboxed: bool) -> list[dict]:
    """Deploys of never-built sources, and the same compile timed alone."""
    deploy_ms, build_ms, client_ms, gcc_ms, jailed_ms = [], [], [], [], []
    with client(base_url) as c:
        for _ in range(samples):
            source = module_source(compute_iters, f"cold-{uuid.uuid4().hex}")
            d = deploy(c, source)
            if d.response.get("cache_hit") or d.response.get("noop"):
                raise DeployError(f"a fresh source was not built: {d.response}")
            deploy_ms.append(d.response["deploy_ms"])
            build_ms.append(d.response["build_ms"])
            client_ms.append(d.client_ms)
            probe = module_source(compute_iters, f"gcc-{uuid.uuid4().hex}")
            gcc_ms.append(time_gcc(probe, data_dir, sandboxed=False))
            if sandboxed:
                jailed_ms.append(time_gcc(probe, data_dir, sandboxed=True))
    gcc = _median(gcc_ms)
    cold_deploy = _median(deploy_ms)
    return [
        {
            "name": "deploy_cold", "group": "deploy", "system": "cweb", "metric": "ms",
            "value": cold_deploy, "p50_ms": cold_deploy, "p99_ms": None, "max_ms": round(max(deploy_ms), 2),
            "build_ms": _median(build_ms), "client_ms": _median(client_ms), "gcc_ms": gcc,
            "over_gcc_ms": round(cold_deploy - gcc, 2) if cold_deploy is not None and gcc is not None else None,
            "samples": samples,
            "description": "POST /mgnt of a never-built source: server deploy_ms (build + load + onload + swap), median",
        },
        {
            "name": "gcc_alone", "group": "deploy", "system": "gcc", "metric": "ms",
            "value": gcc, "p50_ms": gcc, "p99_ms": None, "max_ms": round(max(gcc_ms), 2),
            "sandboxed_ms": _median(jailed_ms), "samples": samples,
            "description": "the builder's gcc command line on the same module, run alone without the sandbox, median",
        },
    ]


# Between cache-hit deploys: time for the runtime to warm its next spare worker,
# as it has when deploys come from people or CI. Back to back, every deploy also
# waits for a Python interpreter to start; the burst row measures that.
CACHE_HIT_PAUSE_S = 0.3


def cache_hit(base_url: str, compute_iters: int, samples: int) -> list[dict]:
    """Cache-hit redeploys of an inactive version, paced and back to back."""
    return _cache_hit(base_url, compute_iters, samples, CACHE_HIT_PAUSE_S, "deploy_cache_hit") + _cache_hit(
        base_url, compute_iters, samples, 0.0, "deploy_cache_hit_burst"
    )


def _cache_hit(base_url: str, compute_iters: int, samples: int, pause_s: float, name: str) -> list[dict]:
    """Deploy A, B, A, B, ...: each deploy after the first two is a cache hit of an inactive version."""
    run_id = uuid.uuid4().hex[:8]
    sources = [module_source(compute_iters, f"hit-a-{run_id}"), module_source(compute_iters, f"hit-b-{run_id}")]
    deploy_ms, build_ms, client_ms = [], [], []
    with client(base_url) as c:
        for source in sources:
            deploy(c, source)
        i = 0
        while len(deploy_ms) < samples:
            time.sleep(pause_s)
            d = deploy(c, sources[i % 2])
            i += 1
            if not d.response.get("cache_hit") or d.response.get("noop"):
                raise DeployError(f"expected a cache-hit activation, got {d.response}")
            deploy_ms.append(d.response["deploy_ms"])
            build_ms.append(d.response["build_ms"])
            client_ms.append(d.client_ms)
    value = _median(deploy_ms)
    return [{
        "name": name, "group": "deploy", "system": "cweb", "metric": "ms",
        "value": value, "p50_ms": value, "p99_ms": None, "max_ms": round(max(deploy_ms), 2),
        "build_ms": _median(build_ms), "client_ms": _median(client_ms), "samples": samples,
        "description": f"redeploy of an inactive, already-built version (deploy A, B, A, ...) every {pause_s:g} s: server deploy_ms, median",
    }]


@dataclass
class _Swapper:
    base_url: str
    sources: list[bytes]
    stop: threading.Event = field(default_factory=threading.Event)
    swaps: int = 0
    failures: list[str] = field(default_factory=list)
    deploy_ms: list[float] = field(default_factory=list)
    last_tag_index: int = -1

    def run(self) -> None:
        with client(self.base_url) as c:
            i = 0
            next_at = time.monotonic() + SWAP_INTERVAL_S
            while not self.stop.wait(max(0.0, next_at - time.monotonic())):
                next_at += SWAP_INTERVAL_S
                try:
                    d = deploy(c, self.sources[i % 2])
                except (DeployError, httpx.HTTPError) as exc:
                    self.failures.append(str(exc)[:300])
                else:
                    self.swaps += 1
                    self.deploy_ms.append(d.response["deploy_ms"])
                    self.last_tag_index = i % 2
                i += 1


def hot_swap(base_url: str, compute_iters: int, duration_s: float, connections: int = 64) -> list[dict]:
    """wrk on /b/trivial while the module flips between two versions every 0.5 s."""
    run_id = uuid.uuid4().hex[:8]
    tags = [f"swap-a-{run_id}", f"swap-b-{run_id}"]
    sources = [module_source(compute_iters, t) for t in tags]
    with client(base_url) as c:
        for source in reversed(sources):  # both built; B active, so the first swap is to A
            deploy(c, source)
    swapper = _Swapper(base_url, sources)
    url = base_url + "/b/trivial"
    proc = wrk.start_wrk(url, connections, duration_s)
    thread = threading.Thread(target=swapper.run, name="bench-swapper", daemon=True)
    thread.start()
    try:
        result = wrk.finish_wrk(proc, url, connections, duration_s)
    finally:
        swapper.stop.set()
        thread.join(60)
    with client(base_url) as c:
        served = c.get("/b/tag").text
    expected = tags[swapper.last_tag_index] if swapper.last_tag_index >= 0 else tags[1]
    return [{
        "name": f"hot_swap_c{connections}", "group": "deploy", "system": "cweb", "metric": "req/s",
        "value": result.requests_per_s, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
        "errors": result.errors, "socket_errors": result.socket_errors, "non_2xx": result.non_2xx,
        "requests": result.requests, "swaps": swapper.swaps, "swap_failures": swapper.failures,
        "swap_deploy_ms": _median(swapper.deploy_ms), "served_latest_version": served == expected,
        "description": f"GET /b/trivial at {connections} connections while the module is redeployed (A/B) every {SWAP_INTERVAL_S} s",
    }]


def run(base_url: str, data_dir: Path, compute_iters: int, quick: bool, duration_s: float, sandboxed: bool) -> list[dict]:
    """Every deploy timing, in order: cold, cache hit, hot swap."""
    results = cold(base_url, data_dir, compute_iters, samples=3 if quick else 7, sandboxed=sandboxed)
    results += cache_hit(base_url, compute_iters, samples=10)
    results += hot_swap(base_url, compute_iters, duration_s)
    return results


if __name__ == "__main__":  # pragma: no cover - run.py is the entry point
    raise SystemExit(f"run the suite with: {os.path.relpath(Path(__file__).with_name('run.py'))} --only deploy")
