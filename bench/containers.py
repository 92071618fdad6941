"""Containers vs embedded: time to a healthy stack, cold build and cache-hit
deploy latency through the builder container versus the embedded builder.

    .venv/bin/python bench/containers.py [--rounds 5]

Needs the images (`make images`) and a Docker engine with docker-compose.
The compose stack runs under its own project name on a free loopback port
and is removed (containers, networks, volumes) at the end, even on failure.
All traffic goes to 127.0.0.1. Not part of any test suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py: keep this script's folder off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import httpx  # noqa: E402

ROOT = _HERE.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Server, free_port, route_module  # noqa: E402

HEALTHY_TIMEOUT_S = 120.0


def wait_healthy(url: str, timeout: float = HEALTHY_TIMEOUT_S) -> float:
    """Seconds until GET url/healthz answers 200 (bounded)."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy within {timeout:g}s")


def deploy_latencies(url: str, key: str | None, rounds: int) -> dict[str, list[float]]:
    """Wall-clock ms of cold deploys (new source each) and cache-hit redeploys of a removed module."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    cold: list[float] = []
    hit: list[float] = []
    build_cold: list[float] = []
    with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
        for i in range(rounds):
            name = f"bench_{uuid.uuid4().hex[:10]}"
            source = route_module(name, f"/{name}", f"round {i}").encode()
            t0 = time.perf_counter()
            r = c.post("/mgnt", files={"code": ("bench.c", source, "text/x-c")})
            cold.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            assert r.json()["cache_hit"] is False, r.text
            build_cold.append(r.json()["build_ms"])
            # Remove it, then deploy the same source: a cache hit that loads a new worker.
            c.delete(f"/modules/{name}").raise_for_status()
            t0 = time.perf_counter()
            r = c.post("/mgnt", files={"code": ("bench.c", source, "text/x-c")})
            hit.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            assert r.json()["cache_hit"] is True, r.text
            c.delete(f"/modules/{name}").raise_for_status()
    return {"cold": cold, "hit": hit, "build_cold": build_cold}


def compose(project: str, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker-compose", "-p", project, *args], cwd=str(ROOT), env=env,
        capture_output=True, text=True, timeout=timeout,
    )


def bench_compose(rounds: int) -> dict:
    if shutil.which("docker-compose") is None:
        raise SystemExit("docker-compose is not installed")
    project = f"cwebbench{uuid.uuid4().hex[:8]}"
    port = free_port()
    key = secrets.token_hex(16)
    env = {**os.environ, "CWEB_API_KEY": key, "CWEB_BIND": "127.0.0.1", "CWEB_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        up = compose(project, env, "up", "-d", "--no-build")
        if up.returncode != 0:
            raise RuntimeError(f"docker-compose up failed:\n{up.stderr[-3000:]}")
        wait_healthy(url)
        healthy_s = time.perf_counter() - t0
        return {"healthy_s": healthy_s, **deploy_latencies(url, key, rounds)}
    finally:
        compose(project, env, "down", "-v", "--remove-orphans", timeout=120)


def bench_embedded(rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="cweb-bench-") as tmp:
        server = Server(Path(tmp) / "data")
        t0 = time.perf_counter()
        server.start(timeout=HEALTHY_TIMEOUT_S)
        healthy_s = time.perf_counter() - t0
        try:
            return {"healthy_s": healthy_s, **deploy_latencies(server.url, None, rounds)}
        finally:
            server.stop()


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):7.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="cold deploys and cache-hit redeploys per setup (default 5)")
    args = p.parse_args()
    rounds = max(1, min(args.rounds, 50))
    results = {"compose (builder container)": bench_compose(rounds), "embedded (bubblewrap/local)": bench_embedded(rounds)}
    print(f"\n{rounds} rounds each; ms are median (min-max), wall clock at the client on 127.0.0.1\n")
    print(f"{'setup':30} {'healthy s':>9}  {'cold deploy ms':>20}  {'gcc build_ms':>20}  {'cache-hit deploy ms':>20}")
    for name, r in results.items():
        print(f"{name:30} {r['healthy_s']:9.1f}  {fmt(r['cold']):>20}  {fmt(r['build_cold']):>20}  {fmt(r['hit']):>20}")


if __name__ == "__main__":
    main()
