"""A module author's tests, written against cweb's pytest plugin only.

`cweb` is a real server (gcc builds, worker processes) shared by the
session and emptied before each test. EXAMPLES are cweb's example modules;
your own project points at its .c files the same way.
"""

from pathlib import Path

import pytest

from cweb_testing import DeployError

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent.parent / "example"


def test_route_answers(cweb):
    deployed = cweb.deploy(EXAMPLES / "counter.c")
    assert deployed["name"] == "counter"
    assert [{"method": "GET", "path": "/counter"}] == deployed["routes"]

    first, second = cweb.get("/counter"), cweb.get("/counter")
    assert first.status_code == 200
    assert "Counter: 1" in first.text
    assert "Counter: 2" in second.text


def test_state_is_clean_for_each_test(cweb):
    # test_route_answers deployed counter; this test starts without it.
    assert [] == cweb.modules()
    assert 404 == cweb.get("/counter").status_code


def test_route_with_query_and_logs(cweb):
    cweb.deploy(HERE / "modules" / "greet.c")
    r = cweb.get("/greet", params={"name": "ada"})
    assert (200, "hello ada") == (r.status_code, r.text)
    assert r.headers["content-type"].startswith("text/plain")
    assert "greeted ada" in cweb.logs("greet", wait_for="greeted ada")


def test_job_finishes_with_its_result(cweb):
    cweb.deploy(EXAMPLES / "job_sum.c")
    job = cweb.wait_job(cweb.submit_job("job_sum", "sum", {"n": 100}), timeout=30)
    assert job["state"] == "done"
    assert {"n": 100, "sum": 5050} == job["result"]


def test_job_reports_a_bad_payload(cweb):
    cweb.deploy(EXAMPLES / "job_sum.c")
    job = cweb.run_job("job_sum", "sum", {"n": "many"}, timeout=30)
    assert job["state"] == "failed"
    assert "non-negative integer" in job["error"]


def test_socket_echoes(cweb):
    cweb.deploy(EXAMPLES / "websocket.c")
    with cweb.websocket("/websocket") as ws:
        ws.send("ping")
        assert "You: ping" == ws.recv(timeout=10)


def test_refused_deploy_names_file_line_and_column(cweb):
    with pytest.raises(DeployError) as refused:
        cweb.deploy(HERE / "modules" / "broken.c")
    assert (422, "compile_failed") == (refused.value.status, refused.value.code)
    assert "broken.c:6:18: error: expected expression" in str(refused.value)


def test_control_plane_needs_the_key(cweb):
    source = (HERE / "modules" / "greet.c").read_bytes()
    anonymous = cweb.post("/mgnt", files={"code": ("greet.c", source)})
    assert 401 == anonymous.status_code
    assert cweb.api_key


@pytest.mark.cweb(tls=True, api_key="")
def test_a_server_of_its_own_with_tls(cweb):
    assert cweb.url.startswith("https://")
    cweb.deploy(EXAMPLES / "websocket.c")
    with cweb.websocket("/websocket") as ws:
        ws.send("over tls")
        assert "You: over tls" == ws.recv(timeout=10)
