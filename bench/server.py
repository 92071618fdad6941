"""A cweb server of the benchmark's own: `python -m api` on a free loopback
port with a fresh data dir, started and waited for in one place."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cweb(data_dir: Path, *, port: int | None = None, env: dict | None = None, timeout: float = 60.0,
               root: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """Start the server (log next to data_dir as server.log) and wait for /healthz.

    root: the checkout whose code the server runs (another one for an A/B).
    Returns the process and its base URL; raises RuntimeError with the end of
    the log if it exits or does not become healthy in time."""
    port = port or free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    child_env.update(env or {})
    child_env["PYTHONPATH"] = str(root)
    log_path = data_dir.parent / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=str(root), env=child_env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, timeout, "server", log_path)
    return proc, url


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float, what: str, log_path: Path | None = None) -> None:
    """Wait until url/healthz answers 200; kill proc and raise RuntimeError
    (with the end of its log) if it exits or takes longer than timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(url + "/healthz", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not become healthy within {timeout:g} s")


def stop_cweb(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the server (it stops its runtime and workers), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
