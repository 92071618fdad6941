"""Drive an HTTP endpoint with wrk and read back what it measured.

`run_wrk()` runs one bounded wrk load (`--latency`, a hard wall-clock
timeout on top of wrk's own `-d`) and parses its text report into a
`WrkResult`: requests/s, the p50/p99 of the latency distribution, and every
kind of error wrk counts (socket connect/read/write/timeout errors and
responses that were not 2xx or 3xx). POST loads get a Lua script written to
a temporary directory.

This module is imported as `bench.http` (run.py puts the repository root,
not bench/, on sys.path, so it never shadows the standard library's `http`).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

WRK = "wrk"
# Beyond -d, how long wrk may take to start, drain and report before it is killed.
GRACE_S = 20.0
REQUEST_TIMEOUT = "5s"

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^\s*([\d.]+)(us|ms|s|m|h)\s*$")
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+(?:us|ms|s|m|h))\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+(?:us|ms|s|m|h))", re.M)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(Exception):
    """wrk could not run, or its report could not be read."""


@dataclass
class WrkResult:
    """One wrk run, as read from its report."""

    url: str
    connections: int
    duration_s: float
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0

    @property
    def errors(self) -> int:
        """Every failed request: socket errors of all kinds plus non-2xx/3xx responses."""
        return sum(self.socket_errors.values()) + self.non_2xx

    def as_dict(self) -> dict:
        d = asdict(self)
        d["errors"] = self.errors
        return d


def duration_ms(text: str) -> float:
    """wrk's '630.00us' / '1.23ms' / '2.00s' as milliseconds."""
    m = _DURATION.match(text)
    if not m:
        raise WrkError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_report(output: str, url: str = "", connections: int = 0) -> WrkResult:
    """Parse wrk's text report (run with --latency)."""
    percentiles = {m.group(1): duration_ms(m.group(2)) for m in _PERCENTILE.finditer(output)}
    rps = _RPS.search(output)
    total = _TOTAL.search(output)
    if rps is None or total is None or "50" not in percentiles or "99" not in percentiles:
        raise WrkError(f"could not read the wrk report:\n{output[-2000:]}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    sock = _SOCKET_ERRORS.search(output)
    if sock:
        errors = dict(zip(errors, map(int, sock.groups()), strict=True))
    non_2xx = _NON_2XX.search(output)
    return WrkResult(
        url=url,
        connections=connections,
        duration_s=duration_ms(total.group(2)) / 1000,
        requests=int(total.group(1)),
        requests_per_s=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        percentiles_ms=percentiles,
        socket_errors=errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def post_script(directory: Path, body_bytes: int, content_type: str = "application/octet-stream") -> Path:
    """A wrk Lua script that POSTs a body of body_bytes bytes on every request."""
    path = directory / f"post_{body_bytes}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("x", {body_bytes})\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
    )
    return path


def wrk_argv(url: str, connections: int, duration_s: float, threads: int | None = None, script: Path | None = None) -> list[str]:
    threads = threads or max(1, min(connections, os.cpu_count() or 1))
    argv = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration_s))}s",
            "--timeout", REQUEST_TIMEOUT, "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    return argv + [url]


def start_wrk(url: str, connections: int, duration_s: float, script: Path | None = None) -> subprocess.Popen:
    """Start wrk in the background (its own session); finish it with `finish_wrk`."""
    return subprocess.Popen(
        wrk_argv(url, connections, duration_s, script=script),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def finish_wrk(proc: subprocess.Popen, url: str, connections: int, duration_s: float) -> WrkResult:
    """Wait (bounded) for a wrk started by `start_wrk` and parse its report."""
    try:
        output, _ = proc.communicate(timeout=duration_s + GRACE_S)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise WrkError(f"wrk against {url} did not finish within {duration_s + GRACE_S:g} s") from exc
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}:\n{output[-2000:]}")
    return parse_report(output, url, connections)


def run_wrk(url: str, connections: int, duration_s: float, script: Path | None = None) -> WrkResult:
    """One bounded wrk run against url."""
    proc = start_wrk(url, connections, duration_s, script)
    return finish_wrk(proc, url, connections, duration_s)
