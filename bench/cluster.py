"""The cluster path on this machine: cluster/stack.yml with 1 node, then 2.

    .venv/bin/python bench/cluster.py [--duration 10] [--deploys 5] [--build]

Brings the stack up with scripts/cluster.sh (its own stack name, a free
port, a temporary secrets dir; the images as they are unless --build), then
for 1 node and for 2 nodes (`docker service scale`), through the proxy:

- trivial route: wrk, 32 connections, `duration` seconds: requests/s, p50, p99;
- jobs end to end: wrk submits a no-op job on 32 connections for 4 s; timed
  from the first submission until the last job is done (the newest
  `updated_at`), so intake, the PostgreSQL claim, the worker round trip and
  every commit are inside; lost = acknowledged - done;

and with 2 nodes the deploy-to-all-nodes time: `deploys` cold deploys of a
new source, wall time of POST /mgnt and each node's own `ms` from the
answer's `nodes`. The machine has 2 cores shared by everything (proxy,
nodes, builders, PostgreSQL, the object store, wrk): the point is what the
cluster path costs, not scaling. The stack is removed at the end, also on
failure (`cluster.sh down` with CWEB_CLUSTER_PURGE=1). Not part of any test
suite; figures in bench/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py: keep this script's folder off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import httpx  # noqa: E402

ROOT = _HERE.parent
sys.path.insert(0, str(ROOT))

from bench import http as wrk  # noqa: E402
from bench.jobs import MODULE as JOB_MODULE  # noqa: E402
from tests.conftest import free_port, route_module  # noqa: E402

CLIENTS = 32
JOBS_SUBMIT_S = 4.0
JOBS_MAX_S = 120.0
SCALE_TIMEOUT_S = 240.0


class Stack:
    def __init__(self, build: bool) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="cweb-bench-cluster-")
        self.name = f"cwebbench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.build = build
        keep = ("PATH", "HOME", "DOCKER_HOST")
        self.env = {**{k: os.environ[k] for k in keep if k in os.environ}, "CWEB_STACK": self.name, "CWEB_PORT": str(self.port),
                    "CWEB_CLUSTER_DIR": self.tmp.name, "CWEB_NODES": "1", "CWEB_BUILDERS": "1",
                    "CWEB_IMAGE_TAG": os.environ.get("CWEB_IMAGE_TAG", "dev")}
        self.key = ""

    def script(self, *args: str, **extra: str) -> None:
        done = subprocess.run(["bash", str(ROOT / "scripts" / "cluster.sh"), *args], cwd=str(ROOT),
                              env={**self.env, **extra}, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)} failed:\n{done.stderr[-6000:]}")

    def __enter__(self) -> Stack:
        try:
            self.script("up", CWEB_CLUSTER_BUILD="1" if self.build else "0")
        except BaseException:
            self.__exit__()
            raise
        self.key = (Path(self.tmp.name) / "secrets" / self.name / "api_key").read_text().strip()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.script("down", CWEB_CLUSTER_PURGE="1")
        finally:
            self.tmp.cleanup()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=180, trust_env=False)

    def scale(self, nodes: int) -> None:
        subprocess.run(["docker", "service", "scale", "--detach", f"{self.name}_node={nodes}"], check=True,
                       capture_output=True, timeout=60)
        deadline = time.monotonic() + SCALE_TIMEOUT_S
        with self.client() as c:
            while time.monotonic() < deadline:
                # The proxy sends traffic to every healthy node: count who answers.
                seen = {c.get("/healthz").headers.get("x-cweb-node") for _ in range(6 * nodes)}
                listed = c.get("/_cweb/nodes")
                live = [n for n in listed.json().get("nodes", []) if n.get("live")] if listed.status_code == 200 else []
                if len(seen - {None}) == nodes and len(live) == nodes:
                    return
                time.sleep(1)
        raise RuntimeError(f"{nodes} nodes did not all serve within {SCALE_TIMEOUT_S:g} s")

    def deploy(self, source: str) -> tuple[float, dict]:
        with self.client() as c:
            # A compile can hit the builders' 20 s wall limit on a loaded
            # machine (compile_timeout): such a deploy is timed again.
            for _ in range(3):
                t0 = time.perf_counter()
                r = c.post("/mgnt", files={"code": ("m.c", source.encode(), "text/x-c")})
                wall = (time.perf_counter() - t0) * 1000
                if r.status_code != 422 or r.json().get("error") != "compile_timeout":
                    break
        if r.status_code != 200:
            raise RuntimeError(f"deploy answered {r.status_code}: {r.text[:2000]}")
        return wall, r.json()


def lua(directory: str, key: str, body: dict | None = None) -> Path:
    """A wrk script: the API key on every request, and a JSON POST when body is given."""
    path = Path(directory) / f"req-{uuid.uuid4().hex[:6]}.lua"
    lines = [f'wrk.headers["Authorization"] = "Bearer {key}"']
    if body is not None:
        lines += ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}", 'wrk.headers["Content-Type"] = "application/json"']
    path.write_text("\n".join(lines) + "\n")
    return path


def trivial(stack: Stack, path: str, duration: float) -> dict:
    wrk.run_wrk(stack.url + path, CLIENTS, 1.0)  # warm-up
    r = wrk.run_wrk(stack.url + path, CLIENTS, duration)
    return {"per_s": round(r.requests_per_s, 1), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}


def jobs(stack: Stack, module: str) -> dict:
    body = {"module": module, "job": "noop", "payload": {"x": 1}}
    with tempfile.TemporaryDirectory() as d:
        script = lua(d, stack.key, body)
        t_start = time.time()
        r = wrk.run_wrk(stack.url + "/jobs", CLIENTS, JOBS_SUBMIT_S, script)
    deadline = time.monotonic() + JOBS_MAX_S
    with stack.client() as c:
        while any(c.get("/jobs", params={"state": s, "module": module, "limit": 1}).json()["jobs"] for s in ("pending", "running")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs still unfinished {JOBS_MAX_S:g} s after the submissions")
            time.sleep(0.1)
        done, newest, cursor = 0, 0.0, None
        while True:
            params: dict = {"state": "done", "module": module, "limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = c.get("/jobs", params=params).json()
            done += len(page["jobs"])
            newest = max([newest, *(j["updated_at"] for j in page["jobs"])])
            cursor = page.get("next_cursor")
            if cursor is None:
                break
    # updated_at is whole seconds: the elapsed time is rounded up to the next second at worst.
    elapsed = max(newest + 1 - t_start, JOBS_SUBMIT_S)
    return {"acknowledged": r.requests, "done": done, "lost": max(0, r.requests - r.errors - done), "submit_errors": r.errors,
            "per_s": round(done / elapsed, 1), "submit_per_s": round(r.requests_per_s, 1)}


def deploys(stack: Stack, rounds: int) -> dict:
    name = f"benchdeploy_{uuid.uuid4().hex[:6]}"
    walls: list[float] = []
    per_node: list[float] = []
    for i in range(rounds):
        wall, answer = stack.deploy(route_module(name, f"/{name}", f"version {i} {uuid.uuid4().hex}"))
        walls.append(wall)
        nodes = answer.get("nodes", [])
        if any(n.get("outcome") not in ("swapped", "unchanged") for n in nodes):
            raise RuntimeError(f"a node did not swap: {nodes}")
        per_node.extend(float(n["ms"]) for n in nodes if "ms" in n)
    return {"rounds": rounds, "wall_p50_ms": round(statistics.median(walls), 1), "wall_max_ms": round(max(walls), 1),
            "node_p50_ms": round(statistics.median(per_node), 1) if per_node else None,
            "node_max_ms": round(max(per_node), 1) if per_node else None}


def run(duration: float = 10.0, rounds: int = 5, build: bool = False) -> dict:
    result: dict = {"machine": f"{platform.node()} {os.cpu_count()} cores, {platform.platform()}", "clients": CLIENTS}
    with Stack(build) as stack:
        route = f"bench_{uuid.uuid4().hex[:6]}"
        stack.deploy(route_module(route, f"/{route}", "hello"))
        for nodes in (1, 2):
            stack.scale(nodes)
            # A module of its own per run: the count of done jobs is this run's.
            job_module = f"benchjobs_{uuid.uuid4().hex[:6]}"
            stack.deploy(JOB_MODULE.replace("@NAME@", job_module))
            result[f"{nodes}_node"] = {"trivial": trivial(stack, f"/{route}", duration), "jobs": jobs(stack, job_module)}
        result["deploy_2_nodes"] = deploys(stack, rounds)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of wrk on the trivial route (default 10)")
    p.add_argument("--deploys", type=int, default=5, help="cold deploys timed with 2 nodes (default 5)")
    p.add_argument("--build", action="store_true", help="build the images first (scripts/images.sh)")
    args = p.parse_args(argv)
    result = run(args.duration, args.deploys, args.build)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
