"""A/B of the hot paths between this checkout and another one (a reference
commit checked out elsewhere), interleaved, in one run:

- HTTP routes of workloads.c (`--only trivial,big,upload,compute,sha256`): wrk at
  64 connections on each, and the CPU each process (api, agent,
  workers) spent per request, read from /proc/<pid>/stat;
- cache_hit: redeploys of an already-built, inactive version every 0.3 s
  (the server's deploy_ms and its phases).

    git worktree add /tmp/ref e97c336
    .venv/bin/python -m bench.ab /tmp/ref --rounds 4

(as a module, from the repository root: bench/http.py would shadow the
standard library's http if bench/ were sys.path[0]).

On a shared or busy machine, pin: every other process to CPU 0
(`taskset -a -p 0x1 PID`) and this script to CPU 1 (`taskset -c 1 ...`);
its servers and workers inherit the pinning. Both checkouts run with this
interpreter (the reference must import with this checkout's venv).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.deploy import module_source
from bench.http import parse_report, post_script, wrk_argv
from bench.server import ROOT, free_port

TICK = os.sysconf("SC_CLK_TCK")
WORKLOADS = ROOT / "bench" / "modules" / "workloads.c"


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _process_tree(pid: int) -> dict[int, str]:
    """pid -> role (api, agent, worker) of the server and its descendants."""
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except FileNotFoundError:
            continue
        out[p] = "api" if "-m api" in cmd else "worker" if "runtime.worker" in cmd else "agent" if "runtime" in cmd else "other"
        todo += [int(k) for k in kids]
    return out


class Server:
    def __init__(self, tree: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cweb-ab-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
        env["PYTHONPATH"] = str(tree)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api", "--port", self.url.rsplit(":", 1)[1], "--data-dir", str(self.dir / "data")],
            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server of {tree} did not start")

    def deploy(self, client: httpx.Client, source: bytes) -> dict:
        r = client.post(self.url + "/mgnt", files={"code": ("workloads.c", source)})
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# Routes of workloads.c the HTTP A/B can drive: (path, connections, POST body bytes).
ROUTES = {
    "trivial": ("/b/trivial", 64, 0),
    "big": ("/b/big", 64, 0),
    "upload": ("/b/upload", 64, 1 << 20),
    "compute": ("/b/compute", 64, 0),
    "sha256": ("/b/sha256", 64, 0),
}


def http_round(server: Server, route: str, duration: int, scripts: Path) -> str:
    """One wrk run on a route of a running server, with the CPU each of its
    processes spent per request."""
    path, conns, post = ROUTES[route]
    url = server.url + path
    script = post_script(scripts, post) if post else None
    subprocess.run(wrk_argv(url, conns, 1, script=script), capture_output=True, check=True)
    procs = _process_tree(server.proc.pid)
    before = {p: _cpu_s(p) for p in procs}
    out = subprocess.run(wrk_argv(url, conns, duration, script=script), capture_output=True, text=True, check=True).stdout
    spent: dict[str, float] = {}
    for p, role in procs.items():
        spent[role] = spent.get(role, 0.0) + _cpu_s(p) - before[p]
    res = parse_report(out, url, conns)
    n = max(res.requests, 1)
    per = ", ".join(f"{role} {v / n * 1e6:.1f}" for role, v in sorted(spent.items()) if v > 0)
    return (f"{route}_c{conns} {res.requests_per_s:,.0f} req/s p50 {res.p50_ms:.2f} ms p99 {res.p99_ms:.2f} ms"
            f" errors {res.errors}; CPU µs per request: {per}")


def cache_hit(tree: Path, samples: int) -> str:
    s = Server(tree)
    try:
        sources = [module_source(100, "ab-a"), module_source(100, "ab-b")]
        with httpx.Client(timeout=120) as c:
            for source in sources:
                s.deploy(c, source)
            answers = []
            for i in range(samples):
                time.sleep(0.3)
                answers.append(s.deploy(c, sources[i % 2]))
    finally:
        s.stop()
    if not all(a.get("cache_hit") for a in answers):
        raise RuntimeError("expected cache-hit activations")
    med = {k: statistics.median(a["phases"][k] for a in answers) for k in ("load_ms", "start_ms", "swap_ms")}
    return (f"deploy_cache_hit {statistics.median(a['deploy_ms'] for a in answers):.1f} ms "
            f"(build {statistics.median(a['build_ms'] for a in answers):.1f}, "
            + ", ".join(f"{k} {v:.1f}" for k, v in med.items()) + ")")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference", type=Path, help="a checkout of the reference commit")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4, help="seconds of wrk per HTTP run")
    ap.add_argument("--only", default="trivial,cache_hit", help=f"cache_hit and any of {', '.join(ROUTES)}")
    ap.add_argument("--compute-iters", type=int, default=530_000, help="the ~1 ms loop's count (bench/run.py calibrates it)")
    args = ap.parse_args()
    only = args.only.split(",")
    trees = {"reference": args.reference.resolve(), "this": ROOT}
    routes = [r for r in only if r in ROUTES]
    servers: dict[str, Server] = {}
    scripts = Path(tempfile.mkdtemp(prefix="cweb-ab-lua-"))
    try:
        if routes:
            # One server per checkout for the whole run: a start costs 20-40 s on a loaded machine.
            for name, tree in trees.items():
                servers[name] = Server(tree)
                with httpx.Client(timeout=120) as c:
                    servers[name].deploy(c, module_source(args.compute_iters))
        for i in range(args.rounds):
            # Alternate who goes first: a drift of the machine then hits both.
            order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
            for route in routes:
                for name, _tree in order:
                    print(f"round {i + 1} {name:9s} {http_round(servers[name], route, args.duration, scripts)}", flush=True)
            if "cache_hit" in only:
                for name, tree in order:
                    print(f"round {i + 1} {name:9s} {cache_hit(tree, 12)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(scripts, ignore_errors=True)


if __name__ == "__main__":
    main()
