#!/usr/bin/env python3
"""cweb's benchmark suite: `make bench` (or `.venv/bin/python bench/run.py`).

Starts, on free loopback ports and with temporary directories:
  - nginx returning a constant (bench/nginx.py): the machine's HTTP ceiling;
  - the FastAPI + ctypes baseline (bench/baseline_app.py) over the kernels
    of bench/modules/baseline.c, compiled here with gcc -O2;
  - cweb (`python -m api`) with bench/modules/workloads.c deployed;
then drives each with wrk, times deploys (bench/deploy.py), runs the socket,
jobs and other suites other modules provide, writes bench/results.json and
prints a Markdown table. Every load is bounded in time; nothing leaves
127.0.0.1.

    BENCH_QUICK=1   ~2 s per run, no 256-connection run, fewer samples
    --only a,b      only these groups: trivial sha256 compute big upload
                    deploy sockets jobs services crash containers
    --duration S    seconds of wrk per HTTP workload and system (default 12,
                    quick 2), split over the rounds; also the hot-swap run
    --rounds N      interleaved runs per HTTP workload and system, median
                    reported (default 3, quick 1)
    --out PATH      where to write the JSON (default bench/results.json)

Suites in other files (bench/sockets.py, bench/jobs.py, bench/services.py,
bench/crash.py, bench/containers.py) are called through `run_suite()`: the
first of ENTRY_POINTS a module defines is called with whichever of the
BenchContext fields its parameters name (or the context itself, as `ctx`),
and returns workload dicts (see README.md). A missing module or entry point
is skipped with a note in the table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ is sys.path[0], where http.py would shadow the
# standard library's `http` (none of the imports above loads it); import
# everything from here on with the repository root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench import baseline_app, deploy  # noqa: E402
from bench import http as wrk  # noqa: E402
from bench import nginx as nginx_mod  # noqa: E402

HTTP_GROUPS = ("trivial", "sha256", "compute", "big", "upload")
SUITES = ("sockets", "jobs", "services", "crash", "containers")
GROUPS = (*HTTP_GROUPS, "deploy", *SUITES)
ENTRY_POINTS = ("run", "bench", "run_bench", "benchmark")
MIB = 1 << 20


@dataclass(frozen=True)
class HttpWorkload:
    name: str
    group: str
    path: str
    connections: int
    description: str
    post_bytes: int = 0
    nginx: bool = False  # nginx serves the constant: only the trivial route
    full_only: bool = False  # skipped by BENCH_QUICK


HTTP_WORKLOADS = (
    HttpWorkload("trivial_c1", "trivial", "/b/trivial", 1, "GET a 2-byte constant, 1 keep-alive connection", nginx=True),
    HttpWorkload("trivial_c64", "trivial", "/b/trivial", 64, "GET a 2-byte constant, 64 keep-alive connections", nginx=True),
    HttpWorkload("trivial_c256", "trivial", "/b/trivial", 256, "GET a 2-byte constant, 256 keep-alive connections",
                 nginx=True, full_only=True),
    HttpWorkload("sha256_c64", "sha256", "/b/sha256", 64, "hex SHA-256 (OpenSSL EVP) of a fixed 64 KiB buffer, 64 connections"),
    HttpWorkload("compute_c64", "compute", "/b/compute", 64, "a calibrated ~1 ms integer loop, 64 connections"),
    HttpWorkload("big_c64", "big", "/b/big", 64, "a 1 MiB response body, 64 connections"),
    HttpWorkload("upload_c64", "upload", "/b/upload", 64, "POST a 1 MiB body, answer its length, 64 connections", post_bytes=MIB),
)


def _ratio_ge(field_: str, factor: float) -> Callable[[dict], bool | None]:
    def check(w: dict) -> bool | None:
        r = w.get(field_)
        return None if r is None else r >= factor
    return check


def _all(*checks: Callable[[dict], bool | None]) -> Callable[[dict], bool | None]:
    def check(w: dict) -> bool | None:
        results = [c(w) for c in checks]
        return None if None in results else all(results)
    return check


# Targets of issues 9 (and 2's floors), checked against cweb's numbers.
TARGETS: dict[str, tuple[str, Callable[[dict], bool | None]]] = {
    "trivial_c1": ("p50 ≤ 0.3 ms", lambda w: w["p50_ms"] <= 0.3),
    "trivial_c64": ("≥ 0.25× nginx, ≥ 3× baseline, p99 ≤ 20 ms, ≥ 5,000 req/s",
                    _all(_ratio_ge("ratio_to_nginx", 0.25), _ratio_ge("ratio_to_baseline", 3.0),
                         lambda w: w["p99_ms"] <= 20, lambda w: w["value"] >= 5000)),
    "sha256_c64": ("≥ 0.16× nginx", _ratio_ge("ratio_to_nginx", 0.16)),
    "compute_c64": ("≥ 1,800 req/s", lambda w: w["value"] >= 1800),
    "deploy_cold": ("≤ gcc alone + 100 ms", lambda w: None if w.get("over_gcc_ms") is None else w["over_gcc_ms"] <= 100),
    "deploy_cache_hit": ("≤ 20 ms (issue 2: ≤ 50 ms)", lambda w: w["value"] <= 20),
    "hot_swap_c64": ("0 errors", lambda w: w["errors"] == 0 and not w["swap_failures"]),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """The environment for child servers: no CWEB_* settings, no proxies."""
    drop = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_") and k.lower() not in drop}
    env["PYTHONPATH"] = str(ROOT)
    return env


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2, trust_env=False) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                if c.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{what} was not healthy within {timeout:g} s:\n{log_path.read_text(errors='replace')[-3000:]}")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM a child we started (in its own session), then SIGKILL its group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind in its own group
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(5)


class ChildServer:
    """A Python server we start on a free port and stop at the end."""

    def __init__(self, name: str, argv: list[str], port: int, health_path: str, log_path: Path, env: dict[str, str]) -> None:
        self.name, self.argv, self.port, self.health_path, self.log_path, self.env = name, argv, port, health_path, log_path, env
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ChildServer:
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=str(ROOT), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_healthy(self.url + self.health_path, self.proc, timeout, self.name, self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@dataclass
class BenchContext:
    """What a suite gets: the running servers and the run's settings."""

    root: Path
    tmp: Path
    quick: bool
    duration: float
    python: str
    cweb_url: str
    cweb_data_dir: Path
    baseline_url: str | None
    nginx_url: str | None
    compute_iters: int
    notes: list[str] = field(default_factory=list)

    def deploy(self, source: str | bytes, filename: str = "module.c") -> dict:
        """Deploy a module on the cweb server; returns the /mgnt response."""
        data = source.encode() if isinstance(source, str) else source
        with deploy.client(self.cweb_url) as c:
            return deploy.deploy(c, data, filename).response

    def wrk(self, path: str, connections: int, duration: float | None = None, script: Path | None = None) -> wrk.WrkResult:
        """A bounded wrk run against a path of the cweb server."""
        return wrk.run_wrk(self.cweb_url + path, connections, duration or self.duration, script)


def machine_info() -> dict:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return ""

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = first_line(["nproc"])
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
        "wrk": first_line(["wrk", "-v"]).split(" [")[0],
        "nginx": first_line([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "gcc": first_line(["gcc", "--version"]),
    }


def check_routes(urls: dict[str, str]) -> None:
    """Every system answers every route, and cweb's C agrees with the baseline's."""
    answers: dict[str, dict[str, bytes]] = {}
    with httpx.Client(timeout=30, trust_env=False) as c:
        for system, base in urls.items():
            got = answers[system] = {}
            for w in HTTP_WORKLOADS:
                if system == "nginx" and not w.nginx:
                    continue
                if w.post_bytes:
                    r = c.post(base + w.path, content=b"x" * w.post_bytes)
                else:
                    r = c.get(base + w.path)
                if r.status_code != 200:
                    raise RuntimeError(f"{system} {w.path} answered {r.status_code}: {r.text[:500]}")
                got[w.group] = r.content
    if "baseline" in answers:
        for group in ("sha256", "compute", "big", "upload"):
            if answers["cweb"].get(group) != answers["baseline"].get(group):
                raise RuntimeError(f"cweb and the baseline disagree on /b/{group}: the kernels are not the same")


def run_http(w: HttpWorkload, urls: dict[str, str], duration: float, warmup: float, scripts: Path,
             rounds: int = 1) -> list[dict]:
    """rounds wrk runs of duration/rounds seconds per system, interleaved
    (cweb, baseline, nginx, cweb, ...) so that a noisy stretch of the machine
    hits every system; the run with the median rate is reported."""
    script = wrk.post_script(scripts, w.post_bytes) if w.post_bytes else None
    systems = {system: base for system, base in urls.items() if system != "nginx" or w.nginx}
    each = duration / rounds
    runs: dict[str, list[wrk.WrkResult]] = {system: [] for system in systems}
    for i in range(rounds):
        for system, base in systems.items():
            url = base + w.path
            if warmup and i == 0:
                wrk.run_wrk(url, w.connections, warmup, script)
            log(f"{w.name} on {system}: wrk -c {w.connections} for {each:g} s (round {i + 1} of {rounds})")
            runs[system].append(wrk.run_wrk(url, w.connections, each, script))
    out = []
    for system, results in runs.items():
        median = sorted(results, key=lambda r: r.requests_per_s)[len(results) // 2]
        out.append({
            "name": w.name, "group": w.group, "system": system, "metric": "req/s",
            "value": median.requests_per_s, "p50_ms": median.p50_ms, "p99_ms": median.p99_ms,
            "errors": sum(r.errors for r in results), "connections": w.connections,
            "requests": sum(r.requests for r in results), "rounds": [r.requests_per_s for r in results],
            "description": w.description,
        })
    return out


def normalize(result: Any, suite: str) -> list[dict]:
    """A suite's return value as a list of workload dicts."""
    if result is None:
        return []
    if isinstance(result, dict):
        if "name" in result:
            result = [result]
        else:
            lists = [result[k] for k in ("workloads", "rows", "results") if isinstance(result.get(k), list)]
            if not lists:
                raise ValueError(f"{suite} returned a dict without name, workloads or rows: {sorted(result)}")
            result = lists[0]
    out = []
    for w in result:
        w = dict(w)
        if "name" not in w or "value" not in w:
            raise ValueError(f"a {suite} workload lacks name or value: {w}")
        w.setdefault("group", suite)
        w.setdefault("system", "cweb")
        w.setdefault("metric", "")
        w.setdefault("p50_ms", None)
        w.setdefault("p99_ms", None)
        out.append(w)
    return out


def run_suite(suite: str, ctx: BenchContext) -> tuple[list[dict], str | None]:
    """Call bench/<suite>.py's entry point if it has one; (workloads, note)."""
    try:
        module = importlib.import_module(f"bench.{suite}")
    except ImportError as exc:
        if getattr(exc, "name", None) == f"bench.{suite}":
            return [], f"{suite}: skipped (bench/{suite}.py does not exist yet)"
        return [], f"{suite}: skipped (bench/{suite}.py failed to import: {exc})"
    entry = None
    for name in ENTRY_POINTS:
        entry = getattr(module, name, None)
        if callable(entry):
            break
    if not callable(entry):
        return [], f"{suite}: skipped (bench/{suite}.py has none of {', '.join(ENTRY_POINTS)})"
    offered: dict[str, Any] = {
        "ctx": ctx, "context": ctx, "bench": ctx,
        "server_url": ctx.cweb_url, "base_url": ctx.cweb_url, "url": ctx.cweb_url, "cweb_url": ctx.cweb_url,
        "data_dir": ctx.cweb_data_dir, "quick": ctx.quick, "duration": ctx.duration, "duration_s": ctx.duration,
        "tmp": ctx.tmp, "tmp_dir": ctx.tmp, "workdir": ctx.tmp, "python": ctx.python, "root": ctx.root,
    }
    kwargs: dict[str, Any] = {}
    for p in inspect.signature(entry).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in offered:
            kwargs[p.name] = offered[p.name]
        elif p.default is p.empty:
            return [], f"{suite}: skipped ({entry.__name__}() wants {p.name!r}, which run.py does not provide)"
    log(f"{suite}: bench/{suite}.py {entry.__name__}()")
    try:
        return normalize(entry(**kwargs), suite), None
    except Exception as exc:  # noqa: BLE001 - one suite failing must not lose the others' numbers
        traceback.print_exc(file=sys.stderr)
        return [], f"{suite}: failed ({type(exc).__name__}: {exc})"


def add_ratios(workloads: list[dict]) -> None:
    """ratio_to_nginx (trivial and sha256 against nginx's constant at the same
    connection count) and ratio_to_baseline (cweb against the FastAPI baseline)."""
    by_key = {(w["name"], w["system"]): w for w in workloads}
    for w in workloads:
        if w["system"] not in ("cweb", "baseline") or w.get("metric") != "req/s" or w["group"] not in HTTP_GROUPS:
            continue
        conns = w.get("connections", 64)
        ceiling = by_key.get((f"trivial_c{conns}", "nginx")) or by_key.get(("trivial_c64", "nginx"))
        if ceiling and w["group"] in ("trivial", "sha256") and ceiling["value"]:
            w["ratio_to_nginx"] = round(_ratio(w, ceiling), 3)
        base = by_key.get((w["name"], "baseline"))
        if w["system"] == "cweb" and base and base["value"]:
            w["ratio_to_baseline"] = round(_ratio(w, base), 2)


def _ratio(w: dict, ref: dict) -> float:
    """w's rate over ref's. For the same workload, the median of the ratios
    round by round: the two runs of a round are seconds apart, so a slow
    stretch of the machine divides out."""
    ours, theirs = w.get("rounds"), ref.get("rounds")
    if w["name"] == ref["name"] and ours and theirs and len(ours) == len(theirs) and all(theirs):
        return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    return w["value"] / ref["value"]


def add_targets(workloads: list[dict]) -> None:
    for w in workloads:
        target = TARGETS.get(w["name"]) if w["system"] == "cweb" else None
        if target is None:
            continue
        w["target"] = target[0]
        try:
            w["meets_target"] = target[1](w)
        except (KeyError, TypeError):
            w["meets_target"] = None


def _num(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown_table(results: dict) -> str:
    rows = ["| workload | system | value | unit | p50 ms | p99 ms | errors | × nginx | × baseline | target | met |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for w in results["workloads"]:
        met = {True: "yes", False: "**no**", None: ""}[w.get("meets_target")] if "target" in w else ""
        rows.append("| " + " | ".join([
            w["name"], w["system"], _num(w["value"]), w.get("metric", ""), _num(w.get("p50_ms"), 3), _num(w.get("p99_ms"), 3),
            _num(w.get("errors")), _num(w.get("ratio_to_nginx"), 3), _num(w.get("ratio_to_baseline")),
            w.get("target", ""), met,
        ]) + " |")
    extra = []
    for w in results["workloads"]:
        if w["name"] == "deploy_cold":
            extra.append(f"- cold deploy: server build_ms {_num(w.get('build_ms'))}, deploy_ms {_num(w.get('value'))}, "
                         f"client round trip {_num(w.get('client_ms'))} ms; gcc alone {_num(w.get('gcc_ms'))} ms "
                         f"(deploy − gcc = {_num(w.get('over_gcc_ms'))} ms)")
        elif w["name"] == "gcc_alone" and w.get("sandboxed_ms") is not None:
            extra.append(f"- the same gcc command inside the sandbox (prlimit + bubblewrap): {_num(w['sandboxed_ms'])} ms")
        elif w["name"] == "deploy_cache_hit":
            extra.append(f"- cache-hit redeploy: server build_ms {_num(w.get('build_ms'))}, deploy_ms {_num(w.get('value'))}, "
                         f"client round trip {_num(w.get('client_ms'))} ms (median of {w.get('samples')})")
        elif w["name"].startswith("hot_swap"):
            extra.append(f"- hot swap: {w.get('swaps')} swaps, {w.get('errors')} wrk errors {w.get('socket_errors')}, "
                         f"non-2xx {w.get('non_2xx')}, swap deploy failures {len(w.get('swap_failures') or [])}, "
                         f"served the latest version afterwards: {w.get('served_latest_version')}")
    notes = [f"- {n}" for n in results["notes"]]
    m = results["machine"]
    head = (f"Machine: {m['nproc']} × {m['cpu']}, Linux {m['kernel']}, Python {m['python']}, {m['date']}; "
            f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}; "
            f"{'quick mode, ' if results['quick'] else ''}HTTP workloads: median of {results['rounds']} interleaved "
            f"wrk runs of {results['duration_s'] / results['rounds']:g} s; "
            f"compute loop {results['compute_iters']:,} iterations.")
    return "\n".join([head, "", *rows, "", *extra, *notes])


def dump_logs(tmp: Path) -> None:
    """On failure, the tail of every server log, before the temp dir goes."""
    for path in [*sorted(tmp.glob("*.log")), tmp / "nginx" / "error.log"]:
        if path.exists():
            print(f"--- {path.name} (tail) ---\n{path.read_text(errors='replace')[-3000:]}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="cweb benchmark suite")
    parser.add_argument("--only", default="", help=f"comma-separated groups: {','.join(GROUPS)}")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of wrk per HTTP workload and system, and per hot-swap run (default 12, BENCH_QUICK=1: 2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="HTTP workloads: interleaved runs per system, median reported (default 3, BENCH_QUICK=1: 1)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"), help="where to write the results JSON")
    args = parser.parse_args(argv)
    selected = [g.strip() for g in args.only.split(",") if g.strip()] or list(GROUPS)
    unknown = sorted(set(selected) - set(GROUPS))
    if unknown:
        parser.error(f"unknown groups {unknown}; choose from {', '.join(GROUPS)}")
    args.groups = [g for g in GROUPS if g in selected]
    return args


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    duration = args.duration or (2.0 if quick else 12.0)
    rounds = max(1, args.rounds or (1 if quick else 3))
    warmup = 0.0 if quick else 1.0
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package: wrk); `make install-test` installs it", file=sys.stderr)
        return 2

    command = ("BENCH_QUICK=1 " if quick else "") + " ".join(["bench/run.py", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    results: dict[str, Any] = {
        "machine": machine_info(), "command": command.strip(), "quick": quick, "duration_s": duration, "rounds": rounds,
        "groups": args.groups, "workloads": [], "notes": [],
    }
    notes: list[str] = results["notes"]
    http_groups = [g for g in args.groups if g in HTTP_GROUPS]
    workloads = [w for w in HTTP_WORKLOADS if w.group in http_groups and not (quick and w.full_only)]
    if quick and "trivial" in http_groups:
        notes.append("quick mode: trivial_c256 skipped")
    tmp = Path(tempfile.mkdtemp(prefix="cweb-bench-"))
    env = clean_env()

    with ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        stack.push(lambda exc_type, exc, tb: dump_logs(tmp) if exc_type is not None else None)
        log(f"compiling {baseline_app.SOURCE.relative_to(ROOT)} and calibrating the ~1 ms loop")
        lib = baseline_app.compile_library(tmp)
        iters = baseline_app.calibrate(lib)
        results["compute_iters"] = iters

        urls: dict[str, str] = {}
        data_dir = tmp / "cweb" / "data"
        port = free_port()
        cweb = ChildServer("cweb", [sys.executable, "-m", "api", "--port", str(port), "--data-dir", str(data_dir)],
                           port, "/healthz", tmp / "cweb.log", env)
        log("starting cweb")
        stack.callback(cweb.stop)
        cweb.start()
        with httpx.Client(timeout=10, trust_env=False) as c:
            health = c.get(cweb.url + "/healthz").json()
        sandboxed = health.get("builds") == "bubblewrap"
        results["machine"]["cweb_builds"] = health.get("builds")
        urls["cweb"] = cweb.url
        log("deploying bench/modules/workloads.c")
        with deploy.client(cweb.url) as c:
            first = deploy.deploy(c, deploy.module_source(iters))
        results["initial_deploy"] = {k: first.response.get(k) for k in ("module_hash", "build_ms", "deploy_ms", "cache_hit")}

        if workloads:
            port = free_port()
            baseline = ChildServer("baseline", [sys.executable, "-m", "bench.baseline_app", "--port", str(port), "--lib", str(lib),
                                                "--compute-iters", str(iters)], port, "/b/trivial", tmp / "baseline.log", env)
            log("starting the FastAPI + ctypes baseline")
            stack.callback(baseline.stop)
            baseline.start()
            urls["baseline"] = baseline.url
            if any(w.nginx for w in workloads):
                if nginx_mod.available():
                    log("starting nginx")
                    server = nginx_mod.Nginx(tmp / "nginx", free_port())
                    stack.callback(server.stop)
                    server.start()
                    urls["nginx"] = server.url
                else:
                    notes.append("nginx is not installed: no ceiling, no ratio_to_nginx")
            check_routes(urls)

        for w in workloads:
            results["workloads"] += run_http(w, urls, duration, warmup, tmp, rounds)

        if "deploy" in args.groups:
            log("deploy timings: cold, cache hit, hot swap under load")
            results["workloads"] += deploy.run(cweb.url, data_dir, iters, quick, duration, sandboxed)

        ctx = BenchContext(ROOT, tmp, quick, duration, sys.executable, cweb.url, data_dir,
                           urls.get("baseline"), urls.get("nginx"), iters, notes)
        for suite in SUITES:
            if suite in args.groups:
                found, note = run_suite(suite, ctx)
                results["workloads"] += found
                if note:
                    notes.append(note)

    results["machine"]["loadavg_end"] = list(os.getloadavg())
    add_ratios(results["workloads"])
    add_targets(results["workloads"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown_table(results))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
