"""An embedded cweb for tests: the real `python -m api` (gcc builds, runtime
agent, worker processes) in a subprocess on a free loopback port, with a
data directory of its own.

    with CwebServer(tmp_path) as cweb:
        cweb.deploy("example/counter.c")
        assert cweb.get("/counter").status_code == 200
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from cweb_testing.client import CwebClient
from cweb_testing.errors import ServerStartError

# Seconds: the first start of a data dir compiles the SDK glue once (20 s on a loaded 2-core CI machine).
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
# Port races (another process took the free port before the server bound it).
START_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _package_root() -> str:
    """The directory holding the `api` package this interpreter imports:
    the server runs the same cweb as the tests (a checkout or site-packages)."""
    spec = importlib.util.find_spec("api")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("the cweb server package (api) is not importable: pip install cweb")
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


class CwebServer(CwebClient):
    """A running `python -m api`.

    base_dir holds data/ (the data dir), work/ (the default working
    directory), server.log and the TLS files; a temporary one when None,
    deleted by stop().

    api_key: None generates a random key (the helpers send it); "" runs
    without one. tls=True serves HTTPS/WSS with a throwaway CA (trustme)
    that the helpers trust. env: more CWEB_* settings (limits, timeouts:
    see api/settings.py); the caller's own CWEB_* variables never leak in.
    workdir: the modules' working directory (static files, relative paths)."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        api_key: str | None = None,
        tls: bool = False,
        env: dict[str, str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__()
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="cweb-test-"))
        self.data_dir = self.base_dir / "data"
        self.api_key = secrets.token_hex(16) if api_key is None else (api_key or None)
        self.tls = tls
        self.env = dict(env or {})
        self.workdir = Path(workdir) if workdir is not None else None
        self.port = port or 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "server.log"
        self._log: Any = None
        self._cert_files: tuple[str, str] | None = None

    @property
    def url(self) -> str:  # type: ignore[override]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # ---- lifecycle --------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> CwebServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "work").mkdir(exist_ok=True)
        if self.tls and self._cert_files is None:
            self._make_certificate()
        fixed_port = bool(self.port)
        for attempt in range(START_ATTEMPTS):
            if not fixed_port:
                self.port = free_port()
            try:
                self._spawn(timeout)
                return self
            except ServerStartError as exc:
                if fixed_port or attempt == START_ATTEMPTS - 1 or "address already in use" not in str(exc).lower():
                    raise
        raise AssertionError("unreachable")

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
        env.update(self.env)
        if self.api_key:
            env["CWEB_API_KEY"] = self.api_key
        if self._cert_files:
            env["CWEB_TLS_CERT"], env["CWEB_TLS_KEY"] = self._cert_files
        if self.workdir is not None:
            env["CWEB_WORKDIR"] = str(self.workdir)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        return env

    def _spawn(self, timeout: float) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            # An empty directory by default: no server.crt/server.key of the
            # user's project is picked up by accident, no file leaks into modules.
            cwd=str(self.workdir or self.base_dir / "work"),
            env=self._environment(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._reap()
                raise ServerStartError(f"cweb exited with {code} while starting:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        tail = self.log_tail()  # read before stop(), which may delete a directory it made
        self.stop()
        raise ServerStartError(f"cweb did not answer /healthz within {timeout:g} s:\n{tail}")

    def _make_certificate(self) -> None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert_path, key_path = self.base_dir / "server.crt", self.base_dir / "server.key"
        cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        self._cert_files = (str(cert_path), str(key_path))
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(ctx)
        self.verify = ctx
        self.ca_pem = ca.cert_pem.bytes()

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 15 s); the data dir stays for a post-mortem unless we made it."""
        self.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._reap()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _reap(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> CwebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what a test inspects --------------------------------------

    def server_log(self) -> str:
        """Everything the server process printed."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.server_log().splitlines()[-lines:])

    def _forget_module_data(self, name: str) -> None:
        shutil.rmtree(self.data_dir / "modules-data" / name, ignore_errors=True)

    def _forget_secrets(self) -> None:
        shutil.rmtree(self.data_dir / "secrets", ignore_errors=True)

