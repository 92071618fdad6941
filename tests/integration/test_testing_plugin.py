"""cweb_testing as its users meet it: the sample project in tests/user_project
run by pytest in a subprocess, the plugin coming in through its pytest11
entry point (nothing passes -p), against real servers and example modules."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cweb_testing import CwebServer, DeployError, JobTimeout, LogTimeout, RequestError
from tests.conftest import ROOT, SPIN_JOB, wait_for

PROJECT = ROOT / "tests" / "user_project"
# The sample project's tests: every one passes (test_my_modules.py); the demo fails on purpose.
SAMPLE_TESTS = [
    "test_route_answers", "test_state_is_clean_for_each_test", "test_route_with_query_and_logs",
    "test_job_finishes_with_its_result", "test_job_reports_a_bad_payload", "test_socket_echoes",
    "test_refused_deploy_names_file_line_and_column", "test_control_plane_needs_the_key",
    "test_a_server_of_its_own_with_tls",
]

pytestmark = pytest.mark.timeout(900)


def run_pytest(*args: str, cwd: Path = PROJECT, timeout: float = 840) -> subprocess.CompletedProcess:
    """pytest as a user runs it in their project: no CWEB_* or PYTEST_* settings of ours leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CWEB_", "PYTEST_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def sample_run() -> subprocess.CompletedProcess:
    """One run of the sample project plus the demo of a refused deploy (one server start)."""
    registered = [ep.value for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "cweb"]
    assert ["cweb_testing.plugin"] == registered, "the pytest11 entry point is not installed: pip install -e '.[test]'"
    return run_pytest("test_my_modules.py", "demo_refused_deploy.py")


def test_sample_project_passes_with_the_plugin_from_its_entry_point(sample_run: subprocess.CompletedProcess) -> None:
    out = sample_run.stdout + sample_run.stderr
    passed = sorted(line.split("::")[1].split()[0] for line in out.splitlines() if line.startswith("PASSED test_my_modules.py::"))
    assert sorted(SAMPLE_TESTS) == passed, out[-6000:]
    assert f"{len(SAMPLE_TESTS)} passed" in out and "1 failed" in out, out[-6000:]


def test_refused_deploy_fails_the_test_with_file_line_and_column(sample_run: subprocess.CompletedProcess) -> None:
    """The demo's failure reads like gcc: file:line:col, the line, a caret; then the server's log."""
    out = sample_run.stdout
    assert 1 == sample_run.returncode, out[-6000:]
    assert "FAILED demo_refused_deploy.py::test_deploy_broken_module" in out
    assert "DeployError: cweb refused broken.c: 422 compile_failed" in out
    assert "broken.c:6:18: error: expected expression before ';' token" in out
    assert "    6 |     int answer = ;" in out
    assert "      |                  ^" in out
    assert "cweb server log (last 40 lines)" in out
    assert "build failed broken.c" in out


def test_bad_cweb_env_option_stops_the_run_as_a_usage_error(tmp_path: Path) -> None:
    """--cweb-env takes CWEB_NAME=VALUE; anything else ends the run before any server starts."""
    (tmp_path / "test_nothing.py").write_text("def test_nothing(cweb):\n    assert cweb.url\n")
    done = run_pytest("--cweb-env", "REQUEST_TIMEOUT=5", cwd=tmp_path, timeout=120)
    assert 4 == done.returncode, done.stdout + done.stderr
    assert "--cweb-env takes CWEB_NAME=VALUE, not 'REQUEST_TIMEOUT=5'" in done.stderr


def test_cweb_env_from_ini_and_option_reach_the_server(tmp_path: Path) -> None:
    """cweb_env in pytest.ini and --cweb-env on the command line both set limits of the session's server."""
    counter = ROOT / "example" / "counter.c"
    (tmp_path / "pytest.ini").write_text("[pytest]\ncweb_env =\n    CWEB_MAX_BODY_BYTES=1024\n")
    (tmp_path / "test_limit.py").write_text(
        "from pathlib import Path\n"
        "import pytest\n"
        "from cweb_testing import DeployError\n"
        f"GREET = Path({str(PROJECT / 'modules' / 'greet.c')!r})\n"
        f"COUNTER = Path({str(counter)!r})\n"
        "def test_limits(cweb):\n"
        "    cweb.deploy(GREET)\n"
        "    assert 200 == cweb.get('/greet').status_code\n"
        "    assert 413 == cweb.request('GET', '/greet', content=b'x' * 4096).status_code\n"
        "    with pytest.raises(DeployError) as refused:\n"
        "        cweb.deploy(COUNTER)\n"
        "    assert 413 == refused.value.status\n"
        "@pytest.mark.cweb(env={'CWEB_MAX_BODY_BYTES': '8192'})\n"
        "def test_marker_keeps_the_session_env_and_overrides_it(cweb):\n"
        "    cweb.deploy(GREET)\n"
        "    assert 200 == cweb.request('GET', '/greet', content=b'x' * 4096).status_code\n"
        "    with pytest.raises(DeployError) as refused:\n"
        "        cweb.deploy(COUNTER)\n"
        "    assert 413 == refused.value.status\n"
    )
    limit = counter.stat().st_size - 1
    assert (PROJECT / "modules" / "greet.c").stat().st_size < limit
    done = run_pytest("--cweb-env", f"CWEB_MAX_SOURCE_BYTES={limit}", cwd=tmp_path, timeout=300)
    assert 0 == done.returncode, done.stdout[-6000:] + done.stderr[-3000:]
    assert "PASSED test_limit.py::test_limits" in done.stdout
    assert "PASSED test_limit.py::test_marker_keeps_the_session_env_and_overrides_it" in done.stdout


def test_session_options_tls_key_and_workdir_reach_the_server(tmp_path: Path) -> None:
    """--cweb-tls, --cweb-api-key and --cweb-workdir configure the session's server."""
    site = tmp_path / "site"
    (site / "static").mkdir(parents=True)
    (site / "static" / "hello.txt").write_text("from the workdir\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_options.py").write_text(
        "from pathlib import Path\n"
        f"STATIC = Path({str(ROOT / 'example' / 'static.c')!r})\n"
        f"ECHO = Path({str(ROOT / 'example' / 'websocket.c')!r})\n"
        "def test_options(cweb):\n"
        "    assert cweb.url.startswith('https://127.0.0.1:')\n"
        "    assert 'fixed-key-123' == cweb.api_key\n"
        "    cweb.deploy(STATIC)\n"
        "    r = cweb.get('/static/hello.txt')\n"
        "    assert (200, 'from the workdir\\n') == (r.status_code, r.text)\n"
        "    cweb.deploy(ECHO)\n"
        "    with cweb.websocket('/websocket') as ws:\n"
        "        ws.send('tls')\n"
        "        assert 'You: tls' == ws.recv(timeout=10)\n"
        "    assert 401 == cweb.post('/mgnt', files={'code': ('x.c', b'x')}, headers={'Authorization': 'Bearer other'}).status_code\n"
    )
    done = run_pytest("--cweb-tls", "--cweb-api-key=fixed-key-123", f"--cweb-workdir={site}", cwd=project, timeout=300)
    assert 0 == done.returncode, done.stdout[-6000:] + done.stderr[-3000:]
    assert "PASSED test_options.py::test_options" in done.stdout


# ---------------------------------------------------------------------------
# the helpers, in this process (the plugin is loaded here by its entry point too)

SPIN_MODULE = r"""#include <cweb.h>
#include <unistd.h>
""" + SPIN_JOB + r"""
export module_t config = {
    .name = "spinner", .author = "tests",
    .jobs = { {"spin", run_spin, NULL} }, .job_size = 1,
};
"""


def test_wait_job_times_out_readably_and_reset_cancels_the_job(cweb: CwebServer) -> None:
    """A job still running at the deadline is JobTimeout naming its state; the next reset cancels it."""
    cweb.deploy(SPIN_MODULE)
    job_uuid = cweb.submit_job("spinner", "spin", {})
    assert wait_for(lambda: cweb.job(job_uuid)["state"] == "running", 20)
    with pytest.raises(JobTimeout) as late:
        cweb.wait_job(job_uuid, timeout=0.3)
    assert f"job {job_uuid} did not finish within 0.3 s (last state: running" in str(late.value)
    cweb.reset()
    assert "canceled" == cweb.wait_job(job_uuid, timeout=20)["state"]
    assert [] == cweb.modules()


def test_logs_wait_for_a_line_and_time_out_naming_what_was_printed(cweb: CwebServer) -> None:
    """Output reaches the server after the answer: wait_for waits for it, and a
    line that never comes is LogTimeout with the module's last lines."""
    cweb.deploy(ROOT / "tests" / "user_project" / "modules" / "greet.c")
    assert 200 == cweb.get("/greet", params={"name": "lin"}).status_code
    assert "greeted lin" in cweb.logs("greet", wait_for="greeted lin")
    with pytest.raises(LogTimeout) as late:
        cweb.logs("greet", wait_for="never printed", timeout=0.3)
    assert "printed no line with 'never printed' within 0.3 s" in str(late.value)
    assert "greeted lin" in str(late.value)


def test_helpers_raise_request_error_with_the_servers_code(cweb: CwebServer) -> None:
    with pytest.raises(RequestError) as missing:
        cweb.logs("no_such_module")
    assert (404, "module_not_found") == (missing.value.status, missing.value.code)
    assert "no_such_module" in str(missing.value)
    with pytest.raises(RequestError) as unknown:
        cweb.submit_job("no_such_module", "x", {})
    assert 400 <= unknown.value.status < 500 and unknown.value.code


def test_deploy_takes_a_path_a_path_string_or_source(cweb: CwebServer, tmp_path: Path) -> None:
    src = (ROOT / "example" / "counter.c").read_text()
    assert "counter" == cweb.deploy(ROOT / "example" / "counter.c")["name"]
    assert cweb.deploy(str(ROOT / "example" / "counter.c"))["noop"]
    assert cweb.deploy(src)["noop"]
    with pytest.raises(FileNotFoundError):
        cweb.deploy(str(tmp_path / "missing.c"))
    with pytest.raises(DeployError) as refused:
        cweb.deploy("int broken(void) { return undeclared; }\n", filename="inline.c")
    assert refused.value.filename == "inline.c"
    assert any(d["file"] == "inline.c" and d["line"] == 1 for d in refused.value.diagnostics)


SECRET_MODULE = r"""#include <cweb.h>
static int show(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    const char *token = cweb_secret("TOKEN");
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", token ? token : "(none)");
    res->status = HTTP_200_OK;
    return 0;
}
export module_t config = {
    .name = "secretive", .author = "tests",
    .routes = { {"/secretive", "GET", show, NONE} }, .size = 1,
};
"""


def test_put_secret_reaches_the_module_and_reset_forgets_it(cweb: CwebServer) -> None:
    cweb.put_secret("secretive", "TOKEN", "s3cr3t")
    cweb.deploy(SECRET_MODULE)
    assert "s3cr3t" == cweb.get("/secretive").text
    cweb.reset()
    cweb.deploy(SECRET_MODULE)
    assert "(none)" == cweb.get("/secretive").text
