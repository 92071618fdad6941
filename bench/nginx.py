"""nginx returning a constant: the machine's HTTP ceiling, started in-run.

Debian's `nginx` binary runs in the foreground from a generated minimal
config in a temporary directory (pid file, error log and temp paths all
inside it), two worker processes, no access log, every path answering
`200 ok`, listening on one loopback port only.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NGINX = "nginx"

CONFIG = """\
daemon off;
master_process on;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "ok";
        }}
    }}
}}
"""


class NginxError(Exception):
    """nginx is missing or did not start."""


def available() -> bool:
    return shutil.which(NGINX) is not None or Path("/usr/sbin/nginx").exists()


def _binary() -> str:
    return shutil.which(NGINX) or "/usr/sbin/nginx"


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Wait until 127.0.0.1:port accepts connections or proc dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NginxError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise NginxError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")


class Nginx:
    """A foreground nginx in its own temp dir; use as a context manager."""

    def __init__(self, directory: Path, port: int) -> None:
        self.dir = directory
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Nginx:
        if not available():
            raise NginxError("nginx is not installed (Debian package: nginx)")
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(CONFIG.format(dir=self.dir, port=self.port))
        log = open(self.dir / "stderr.log", "wb")
        # -e: the startup error log, before the config is read, goes here too.
        self.proc = subprocess.Popen(
            [_binary(), "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        try:
            wait_for_port(self.port, self.proc, timeout, "nginx")
        except NginxError as exc:
            self.stop()
            tail = (self.dir / "error.log").read_text(errors="replace")[-1500:] if (self.dir / "error.log").exists() else ""
            raise NginxError(f"{exc}\n{tail}") from exc
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its workers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
