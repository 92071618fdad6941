"""Jobs: durable submissions/s, end-to-end trivial jobs/s, and submit -> done latency.

Starts its own server (a `python -m api` subprocess on a free loopback port
with a temporary data dir, so the jobs database starts empty), deploys a
module with one trivial job, and measures three things:

- submissions: wrk with 32 connections POSTs /jobs for SUBMIT_S seconds
  (about 5,000 jobs at the floor). Each answer means the job and its
  `created` event were committed (fsync'd) to jobs.db. The jobs are delayed
  by an hour so only the intake path is measured; the server is thrown away
  afterwards.
- end to end: wrk submits trivial jobs for E2E_SUBMIT_S seconds on a fresh
  module; timed from the first submission until the last job is `done` (the
  server's own updated_at of the newest job), so submission, dispatch, the
  worker round trip and the three commits of every job are all inside.
- latency: one client at a time submits a job and opens WS /jobs/ws on it;
  the time from sending POST /jobs to receiving the terminal event, p50/p99.

The load generator is wrk (as in bench/http.py): Python HTTP clients on the
same two cores cost more CPU per request than the server does, and would
measure themselves.

Floors (issue 4, 2-core machine): >= 1,000 submissions/s, >= 500 jobs/s end
to end, p50 submit -> done <= 20 ms.

    .venv/bin/python bench/jobs.py            # prints a table, exits 1 below a floor
    .venv/bin/python bench/jobs.py --json     # the dict run() returns
    .venv/bin/python bench/jobs.py --server http://127.0.0.1:8080   # an already running server
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ would be sys.path[0] and bench/http.py would shadow
# the standard library's http (which httpx imports).
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

import http.client  # noqa: E402

import httpx  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402

from bench import http as wrk  # noqa: E402
from bench.server import free_port, start_cweb, stop_cweb  # noqa: E402

# Concurrent connections of the load generator (wrk).
CLIENTS = 32
# Seconds of submissions for the intake rate (about 5,000 jobs at the floor).
SUBMIT_S = 5.0
# Seconds of submissions for the end-to-end run, and how long the jobs may take after it.
E2E_SUBMIT_S = 4.0
E2E_MAX_S = 60.0
# Sequential submit -> terminal event samples (after a warm-up), bounded in time.
LATENCY_SAMPLES = 300
LATENCY_WARMUP = 20
LATENCY_MAX_S = 30.0

FLOORS = {"submissions_per_s": 1000.0, "jobs_per_s": 500.0, "p50_ms": 20.0}

MODULE = r"""
#include <cweb.h>
static int run_noop(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p;
    job->set_result(job, "{\"ok\": true}");
    return 0;
}
export module_t config = {
    .name = "@NAME@", .author = "bench",
    .jobs = { {"noop", run_noop, NULL} }, .job_size = 1,
};
"""


class BenchError(Exception):
    """The server could not be started or refused what the benchmark needs."""


# ---------------------------------------------------------------------------
# server


class LocalServer:
    """`python -m api` on a free port with a temporary data dir."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="cweb-bench-jobs-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(self.tmp.name) / "server.log"

    def __enter__(self) -> LocalServer:
        try:
            self.proc, _ = start_cweb(Path(self.tmp.name) / "data", port=self.port, env=self.env, timeout=30)
        except RuntimeError as exc:
            self.tmp.cleanup()
            raise BenchError(str(exc)) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_cweb(self.proc)
        self.tmp.cleanup()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by pid and every live descendant (agent, workers)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    family, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in family:
                family.add(child)
                frontier.append(child)
    return sum(ticks.get(p, 0) for p in family) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Server CPU per job: how many jobs/s two idle cores could serve, whatever else shares them now."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def __enter__(self) -> CpuMeter:
        self.start = tree_cpu_s(self.pid) if self.pid else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = (tree_cpu_s(self.pid) - self.start) if self.pid else 0.0

    def per_job_ms(self, jobs: int) -> float | None:
        return round(self.seconds * 1000 / jobs, 3) if self.pid and jobs else None


def deploy_module(base_url: str) -> str:
    """Deploy the trivial job module under a fresh name; return the name."""
    name = f"benchjobs_{uuid.uuid4().hex[:8]}"
    source = MODULE.replace("@NAME@", name).encode()
    with httpx.Client(base_url=base_url, timeout=120, trust_env=False) as c:
        r = c.post("/mgnt", files={"code": ("bench_jobs.c", source, "text/x-c")})
    if r.status_code != 200:
        raise BenchError(f"deploy refused with {r.status_code}: {r.text[:2000]}")
    return name


# ---------------------------------------------------------------------------
# measurements


def _post_script(directory: Path, body: dict) -> Path:
    """A wrk Lua script that POSTs `body` as JSON to /jobs on every request."""
    path = directory / "submit_job.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return path


def _wrk_submit(base_url: str, body: dict, duration_s: float) -> wrk.WrkResult:
    if shutil.which(wrk.WRK) is None:
        raise BenchError("wrk is not installed (make install-test installs it)")
    with tempfile.TemporaryDirectory(prefix="cweb-bench-jobs-wrk-") as d:
        result = wrk.run_wrk(base_url + "/jobs", CLIENTS, duration_s, _post_script(Path(d), body))
    if result.errors:
        raise BenchError(f"{result.errors} submissions failed: {result.socket_errors}, non-2xx {result.non_2xx}")
    return result


def submissions(base_url: str, module: str, pid: int | None = None) -> dict:
    """Durable submissions/s: delayed jobs, so only the intake (commit before the answer) is timed."""
    body = {"module": module, "job": "noop", "payload": {"x": 1}, "delay_s": 3600}
    _wrk_submit(base_url, body, 1)  # warm-up
    with CpuMeter(pid) as cpu:
        r = _wrk_submit(base_url, body, SUBMIT_S)
    return {"submitted": r.requests, "seconds": round(r.duration_s, 3), "per_s": round(r.requests_per_s, 1),
            "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "server_cpu_ms_per_job": cpu.per_job_ms(r.requests)}


def _count(c: httpx.Client, module: str, state: str) -> tuple[int, float]:
    """(jobs of module in state, their newest updated_at), paging through GET /jobs."""
    total, newest, cursor = 0, 0.0, None
    for _ in range(1000):
        params: dict = {"state": state, "module": module, "limit": 1000}
        if cursor is not None:
            params["cursor"] = cursor
        page = c.get("/jobs", params=params).json()
        total += len(page["jobs"])
        newest = max([newest, *(j["updated_at"] for j in page["jobs"])])
        cursor = page.get("next_cursor")
        if cursor is None:
            break
    return total, newest


def end_to_end(base_url: str, module: str, pid: int | None = None) -> dict:
    """Trivial jobs submitted by CLIENTS connections for E2E_SUBMIT_S; time from the first
    submission until the last job is done (the server's updated_at of that job)."""
    body = {"module": module, "job": "noop", "payload": {"x": 1}}
    t_start = time.time()
    with CpuMeter(pid) as cpu, httpx.Client(base_url=base_url, timeout=60, trust_env=False) as c:
        r = _wrk_submit(base_url, body, E2E_SUBMIT_S)
        deadline = time.monotonic() + E2E_MAX_S
        while True:
            busy = [c.get("/jobs", params={"state": s, "module": module, "limit": 1}).json()["jobs"] for s in ("pending", "running")]
            if not any(busy):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"jobs were still unfinished {E2E_MAX_S} s after the submissions")
            time.sleep(0.05)
    with httpx.Client(base_url=base_url, timeout=60, trust_env=False) as c:
        done, last_done = _count(c, module, "done")
        failed, _ = _count(c, module, "failed")
    elapsed = last_done - t_start
    return {
        # wrk counts answered requests; a few more may have been in flight when it stopped.
        "submitted": r.requests, "done": done, "failed": failed, "lost": max(0, r.requests - done),
        "seconds": round(elapsed, 3), "per_s": round(done / elapsed, 1), "submit_per_s": round(r.requests_per_s, 1),
        # Includes the polling requests above (a few per 50 ms).
        "server_cpu_ms_per_job": cpu.per_job_ms(done),
    }


def latency(base_url: str, module: str, samples: int = LATENCY_SAMPLES) -> dict:
    """One job at a time: POST /jobs, open WS /jobs/ws on it, wait for the terminal event.

    Clients are the standard library's http.client and websockets' sync
    client: light enough that their own cost stays a small part of the time."""
    host, port = base_url.split("//", 1)[1].split(":")
    ws_base = base_url.replace("http://", "ws://", 1)
    body = json.dumps({"module": module, "job": "noop", "payload": {"x": 1}})
    headers = {"Content-Type": "application/json"}
    times: list[float] = []
    deadline = time.monotonic() + LATENCY_MAX_S
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for i in range(samples + LATENCY_WARMUP):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            conn.request("POST", "/jobs", body, headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                raise BenchError(f"POST /jobs answered {response.status}: {answer}")
            with ws_connect(f"{ws_base}/jobs/ws?id={answer['job_uuid']}&since_event_id=0", open_timeout=10, close_timeout=5) as ws:
                for message in ws:
                    event = json.loads(message)
                    if event.get("type") in ("done", "failed", "canceled"):
                        if event["type"] != "done":
                            raise BenchError(f"job ended {event['type']}: {event}")
                        break
            if i >= LATENCY_WARMUP:
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    if not times:
        raise BenchError("no latency sample finished in time")
    times.sort()
    return {
        "samples": len(times),
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
        "max_ms": round(times[-1], 2),
    }


# ---------------------------------------------------------------------------
# entry points


def run(base_url: str | None = None, pid: int | None = None) -> dict:
    """Every jobs measurement; starts (and stops) a server unless base_url is given.

    With the server's pid (known when this function starts the server), the
    server's own CPU time per job is reported too."""
    if base_url is None:
        with LocalServer() as server:
            assert server.proc is not None
            return run(server.url, server.proc.pid)
    module = deploy_module(base_url)
    raw = {"latency": latency(base_url, module), "submissions": submissions(base_url, module, pid)}
    # A fresh module: the delayed jobs above stay out of the end-to-end counts.
    raw["end_to_end"] = end_to_end(base_url, deploy_module(base_url), pid)
    measured = {
        "submissions_per_s": raw["submissions"]["per_s"],
        "jobs_per_s": raw["end_to_end"]["per_s"],
        "p50_ms": raw["latency"]["p50_ms"],
    }
    ok = {
        "submissions_per_s": measured["submissions_per_s"] >= FLOORS["submissions_per_s"],
        "jobs_per_s": measured["jobs_per_s"] >= FLOORS["jobs_per_s"],
        "p50_ms": measured["p50_ms"] <= FLOORS["p50_ms"],
    }
    rows = [
        {"name": "jobs_submit", "group": "jobs", "system": "cweb", "metric": "jobs/s", "value": measured["submissions_per_s"],
         "floor": FLOORS["submissions_per_s"], "ok": ok["submissions_per_s"], **raw["submissions"],
         "description": f"POST /jobs by {CLIENTS} connections for {SUBMIT_S:g} s, committed before answered (delayed jobs)"},
        {"name": "jobs_end_to_end", "group": "jobs", "system": "cweb", "metric": "jobs/s", "value": measured["jobs_per_s"],
         "floor": FLOORS["jobs_per_s"], "ok": ok["jobs_per_s"], **raw["end_to_end"],
         "description": f"trivial jobs submitted for {E2E_SUBMIT_S:g} s by {CLIENTS} connections, first submit to last done"},
        {"name": "jobs_submit_to_done", "group": "jobs", "system": "cweb", "metric": "ms", "value": measured["p50_ms"],
         "floor": FLOORS["p50_ms"], "ok": ok["p50_ms"], **raw["latency"],
         "description": "POST /jobs to the terminal event on WS /jobs/ws, one job at a time"},
    ]
    cpu = {"submit": raw["submissions"]["server_cpu_ms_per_job"], "end_to_end": raw["end_to_end"]["server_cpu_ms_per_job"]}
    return {**measured, "p99_ms": raw["latency"]["p99_ms"], "server_cpu_ms_per_job": cpu, "floors": FLOORS,
            "ok": all(ok.values()), "raw": raw, "rows": rows}


def print_table(result: dict) -> None:
    print(f"{'measurement':<24}{'value':>14}  {'floor':>10}  ok   notes")
    for row in result["rows"]:
        unit = row["metric"]
        floor = ("<= " if unit == "ms" else ">= ") + f"{row['floor']:g}"
        if unit == "ms":
            note = f"p99 {row['p99_ms']} ms"
        else:
            cpu = row.get("server_cpu_ms_per_job")
            note = f"server CPU {cpu} ms/job" if cpu is not None else ""
        print(f"{row['name']:<24}{row['value']:>8g} {unit:<6}{floor:>10}  {'yes' if row['ok'] else 'NO ':<4} {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="benchmark this running server instead of starting one")
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")
    args = parser.parse_args(argv)
    result = run(args.server)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
