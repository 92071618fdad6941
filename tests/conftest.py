"""Shared fixtures: a real cweb server in a subprocess on a free port."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "example"
# A module author's project, run in a subprocess by tests/integration/test_testing_plugin.py.
collect_ignore = ["user_project"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, sig: int | None = None) -> None:
    """Signal a server we started (SIGTERM unless sig), SIGKILL it if it hangs."""
    if sig is None:
        proc.terminate()
    else:
        proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Server:
    """A running `python -m api` with its own data dir."""

    def __init__(self, data_dir: Path, port: int | None = None, env: dict | None = None, args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = env or {}
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        self.scheme = "http"
        self.verify: object = True
        # Its PostgreSQL database, when it runs on one (tests/databases.py).
        self.database_url: str | None = self.env.get("CWEB_DATABASE_URL")

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    # Seconds: a fresh data dir compiles the SDK glue first; under a load of
    # 20 on 2 cores that alone passed 30 s (eight make_server tests failed so).
    def start(self, timeout: float = 90.0) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
        env.update(self.env)
        if self.database_url is None:
            from tests.databases import server_database

            self.database_url = server_database(self.data_dir)
        if self.database_url:
            env["CWEB_DATABASE_URL"] = self.database_url
        env["PYTHONPATH"] = str(ROOT)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args],
            cwd=str(self.env.get("CWEB_WORKDIR", ROOT)),
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        # The fixture never gets to stop a server it did not return: stop it
        # here (SIGTERM stops its agent and workers too).
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        raise RuntimeError(f"server did not become healthy: {self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int | None = None) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, sig)
        self.log.close()
        self.proc = None

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, verify=self.verify, **kw)  # type: ignore[arg-type]

    def deploy(self, source: str | bytes, filename: str = "module.c", **kw: object) -> httpx.Response:
        data = source.encode() if isinstance(source, str) else source
        with self.client() as c:
            return c.post("/mgnt", files={"code": (filename, data, "text/x-c")}, **kw)  # type: ignore[arg-type]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by a test session; tests use unique module names."""
    s = Server(tmp_path_factory.mktemp("cweb") / "data").start()
    yield s
    s.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Factory for servers owned by one test (restart, settings)."""
    started: list[Server] = []

    def make(data_dir: Path | None = None, **kw: object) -> Server:
        s = Server(data_dir or tmp_path / "data", **kw)  # type: ignore[arg-type]
        started.append(s)
        return s.start()

    yield make
    for s in started:
        s.stop()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll predicate until it holds or timeout passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def unique(prefix: str = "m") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def route_module(name: str, path: str, body: str = "hello", method: str = "GET", extra: str = "") -> str:
    """A one-route module whose handler answers `body` (a C string literal's content)."""
    return f"""
#include <cweb.h>
{extra}
static int handler(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {{
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", "{body}");
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    res->status = HTTP_200_OK;
    return 0;
}}
export module_t config = {{
    .name = "{name}", .author = "tests",
    .routes = {{ {{"{path}", "{method}", handler, NONE}} }}, .size = 1,
}};
"""


# A job that works in 20 ms steps, reporting progress, until it is canceled.
SPIN_JOB = r"""
/* spin: works in 20 ms steps until canceled (at most 60 s). */
static int run_spin(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p;
    for (int i = 0; i < 3000; i++) {
        if (job->is_canceled(job)) {
            job->set_error(job, "canceled");
            return -1;
        }
        job->progress(job, (double)i, 3000.0);
        usleep(20 * 1000);
    }
    job->set_result(job, "{\"spun\": true}");
    return 0;
}
"""

# Which worker process answers, as C: `worker_token` is set when the module is
# loaded and differs between processes (getpid() does not: every worker is
# pid 2 in its own PID namespace).
WORKER_TOKEN_C = r"""
#include <time.h>
static long long worker_token;
__attribute__((constructor)) static void worker_token_mark(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    worker_token = t.tv_sec * 1000000000LL + t.tv_nsec;
}
"""

HANDLER = "static int {fn}(struct cweb_context *ctx, http_request_t *req, http_response_t *res)"


def module(name: str, routes: list[tuple[str, str, str]], code: str, extra: str = "") -> str:
    """A module named `name` whose routes are (path, method, handler function), defined in `code`."""
    table = ", ".join(f'{{"{p}", "{m}", {fn}, NONE}}' for p, m, fn in routes)
    return f"""#include <cweb.h>
#include <signal.h>
#include <unistd.h>
{code}
export module_t config = {{
    .name = "{name}", .author = "tests",
    .routes = {{ {table} }}, .size = {len(routes)},
    {extra}
}};
"""


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CWEB_TEST_NO_SKIP=1 (set by .ci/run) a skip fails: in CI a skip is an untested path."""
    if os.environ.get("CWEB_TEST_NO_SKIP") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and CI allows no skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())


@contextlib.contextmanager
def small_disk(where: Path, mib: int) -> Iterator[Path]:
    """A tmpfs of `mib` MiB mounted at `where` (the tests run as root), unmounted afterwards."""
    assert os.geteuid() == 0, "mounting a small filesystem needs root"
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(path: Path) -> None:
    """Write zeros to path until its filesystem has no block left (unlink path to free it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)



# A real PostgreSQL for the suites that run against it (tests/databases.py).
from tests.databases import TEST_DATABASE, postgres_server, postgres_url, use_for_servers  # noqa: E402, F401

# A real S3-compatible object store for the suites that use one (tests/objects.py).
from tests.objects import s3_endpoint, s3_server  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def servers_database(request: pytest.FixtureRequest) -> None:
    """CWEB_TEST_DATABASE=postgres: every Server keeps its state in PostgreSQL
    (a database per data dir on the session's server) instead of SQLite files."""
    if TEST_DATABASE == "postgres":
        use_for_servers(request.getfixturevalue("postgres_server"))
