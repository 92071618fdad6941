"""The helpers every cweb under test offers (embedded server, container,
compose stack): deploy a C file, call routes, open sockets, run jobs, read
logs, and put the server back to a clean state between tests.

Module routes and sockets are called without the API key, as a browser
would; the control plane (deploy, jobs, logs, modules) with it.
"""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path
from typing import Any

import httpx

from cweb_testing.errors import DeployError, JobTimeout, LogTimeout, RequestError

TERMINAL_JOB_STATES = ("done", "failed", "canceled")
# Seconds: a cold deploy compiles (gcc) and starts a worker; generous for a loaded CI machine.
DEPLOY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0
JOB_POLL_S = 0.05


class CwebClient:
    """Helpers over one cweb's URL. Subclasses set url, api_key and verify."""

    url: str = ""
    api_key: str | None = None
    # What httpx verifies TLS against: True (system CAs), False, or an SSLContext.
    verify: Any = True

    def __init__(self) -> None:
        self._http: httpx.Client | None = None
        self._sockets: list[Any] = []

    # ---- HTTP -------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S, verify=self.verify)
        return self._http

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def request(self, method: str, path: str, *, auth: bool = False, **kw: Any) -> httpx.Response:
        """Any request, as httpx.Client.request takes it. auth=True sends the API key."""
        if auth:
            kw["headers"] = {**self._auth(), **(kw.get("headers") or {})}
        return self._client().request(method, path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def _control(self, what: str, method: str, path: str, **kw: Any) -> Any:
        r = self.request(method, path, auth=True, **kw)
        if r.status_code != 200:
            raise RequestError(what, r.status_code, _body(r))
        return r.json()

    # ---- modules ----------------------------------------------------

    def deploy(self, path_or_source: str | os.PathLike[str], *, filename: str | None = None, check: bool = False) -> dict:
        """Build and activate a module: a path to a .c file, or C source text.

        Returns the deploy answer (name, module_hash, routes, warnings, ...).
        A refusal raises DeployError whose message lists the compiler's
        diagnostics as file:line:col lines. check=True only compiles."""
        __tracebackhide__ = True
        source, name = _read_source(path_or_source)
        filename = filename or name
        r = self.request(
            "POST", "/mgnt", auth=True, params={"check": 1} if check else None,
            files={"code": (filename, source.encode(), "text/x-c")}, timeout=DEPLOY_TIMEOUT_S,
        )
        if r.status_code != 200:
            raise DeployError(filename, r.status_code, _body(r), source)
        return r.json()

    def modules(self) -> list[dict]:
        return self._control("list modules", "GET", "/modules")["modules"]

    def undeploy(self, name: str) -> None:
        self._control(f"remove module {name}", "DELETE", f"/modules/{name}")
        self._forget_module_data(name)

    def _forget_module_data(self, name: str) -> None:
        """Delete modules-data/<name>/ (the module's database) where we can reach it."""

    def _forget_secrets(self) -> None:
        """Delete every module's secrets (<data dir>/secrets/) where we can reach it."""

    def put_secret(self, module: str, key: str, value: str) -> None:
        """Store a secret the module reads with cweb_secret(key); set it before deploy()."""
        self._control(f"secret {key} of {module}", "PUT", f"/modules/{module}/secrets/{key}", content=value.encode())

    def logs(self, module: str, tail: int = 200, *, wait_for: str | None = None, timeout: float = 10.0) -> str:
        """What the module printed (stdout and stderr of every version), one line each.

        A module's output reaches the server through a pipe, after the
        answer of the request that printed it: wait_for waits (up to
        timeout seconds) until some line contains that text, and raises
        LogTimeout with what was there if none does."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        while True:
            lines = self._control(f"logs of {module}", "GET", f"/modules/{module}/logs", params={"tail": tail})["lines"]
            text = "\n".join(entry["line"] for entry in lines)
            if wait_for is None or wait_for in text:
                return text
            if time.monotonic() > deadline:
                raise LogTimeout(module, wait_for, timeout, text)
            time.sleep(0.05)

    # ---- jobs -------------------------------------------------------

    def submit_job(self, module: str | None, job: str, payload: dict | None = None, **fields: Any) -> str:
        """POST /jobs; the new job's uuid. fields: max_attempts, timeout_s, priority, delay_s."""
        body = {"module": module, "job": job, "payload": payload if payload is not None else {}, **fields}
        return self._control(f"submit job {module}/{job}", "POST", "/jobs", json=body)["job_uuid"]

    def job(self, job_uuid: str) -> dict:
        return self._control(f"job {job_uuid}", "GET", f"/jobs/{job_uuid}")

    def wait_job(self, job_uuid: str, timeout: float = 30.0) -> dict:
        """Poll until the job is done, failed or canceled; the job (state, result, error, ...)."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        last: dict | None = None
        while True:
            last = self.job(job_uuid)
            if last["state"] in TERMINAL_JOB_STATES:
                return last
            if time.monotonic() > deadline:
                raise JobTimeout(job_uuid, timeout, last)
            time.sleep(JOB_POLL_S)

    def run_job(self, module: str | None, job: str, payload: dict | None = None, timeout: float = 30.0, **fields: Any) -> dict:
        """submit_job, then wait_job."""
        return self.wait_job(self.submit_job(module, job, payload, **fields), timeout)

    def job_events(self, job_uuid: str) -> list[dict]:
        """The job's stored events (first page, up to 1000)."""
        return self._control(f"events of job {job_uuid}", "GET", f"/jobs/{job_uuid}/events")["events"]

    # ---- sockets ----------------------------------------------------

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http"):]

    def websocket(self, path: str, *, open_timeout: float = 10.0, **kw: Any) -> Any:
        """A connected websockets.sync.client.ClientConnection to a module socket.

        Use it as a context manager, or leave it: reset() and stop() close it."""
        from websockets.sync.client import connect

        if self.url.startswith("https"):
            kw.setdefault("ssl", self._ssl_context())
        # Entered here: websockets >= 17 wants connect() used as a context
        # manager; the connection it yields is one too (exit closes it).
        conn = connect(self.ws_url + path, open_timeout=open_timeout, **kw).__enter__()
        self._sockets.append(conn)
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if isinstance(self.verify, ssl.SSLContext):
            return self.verify
        ctx = ssl.create_default_context()
        if self.verify is False:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # ---- state ------------------------------------------------------

    def reset(self) -> None:
        """Back to a clean server: our sockets closed, pending and running jobs
        canceled, every module removed (with its modules-data directory), no secrets.
        Finished jobs stay in the history; the cross-module cache is not emptied."""
        self._close_sockets()
        for state in ("pending", "running"):
            for job in self._control("list jobs", "GET", "/jobs", params={"state": state, "limit": 1000})["jobs"]:
                r = self.request("POST", f"/jobs/{job['job_uuid']}/cancel", auth=True)
                if r.status_code not in (200, 409):  # 409: it finished meanwhile
                    raise RequestError(f"cancel job {job['job_uuid']}", r.status_code, _body(r))
        for module in self.modules():
            self.undeploy(module["name"])
        self._forget_secrets()

    def _close_sockets(self) -> None:
        sockets, self._sockets = self._sockets, []
        for conn in sockets:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a socket the server already dropped
                pass

    def close(self) -> None:
        """Close our sockets and HTTP connections (the server keeps running)."""
        self._close_sockets()
        if self._http is not None:
            self._http.close()
            self._http = None


def _body(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text


def _read_source(path_or_source: str | os.PathLike[str]) -> tuple[str, str]:
    """(source text, upload file name) from a path or from C source itself.

    A str is a path when it is one line ending in .c or naming an existing
    file; anything with a newline is source."""
    if isinstance(path_or_source, os.PathLike) or (
        "\n" not in path_or_source and (path_or_source.endswith(".c") or os.path.isfile(path_or_source))
    ):
        path = Path(path_or_source)
        return path.read_text(encoding="utf-8"), path.name
    return str(path_or_source), "module.c"
