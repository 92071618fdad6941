"""The example modules (example/*.c) as their README promises, tested through
cweb's own pytest plugin (cweb_testing): the `cweb` fixture is the plugin's
shared server, emptied before each test, so the examples keep their real
names and paths here (dogfooding: the plugin cannot rot unnoticed)."""

from __future__ import annotations

import hashlib
import time

from cweb_testing import CwebServer
from tests.conftest import EXAMPLES, wait_for


def test_example_job_sum(cweb: CwebServer) -> None:
    """example/job_sum.c: {"n": N} -> {"n": N, "sum": N(N+1)/2}; a bad payload fails with a message."""
    cweb.deploy(EXAMPLES / "job_sum.c")
    assert {"n": 100, "sum": 5050} == cweb.run_job("job_sum", "sum", {"n": 100})["result"]
    bad = cweb.run_job("job_sum", "sum", {"n": "many"})
    assert "failed" == bad["state"] and "non-negative integer" in bad["error"]


def test_example_job_hash_streams_progress_and_honours_cancel(cweb: CwebServer) -> None:
    """example/job_hash.c hashes in chunks with progress events; a huge input is canceled promptly."""
    cweb.deploy(EXAMPLES / "job_hash.c")
    job = cweb.run_job("job_hash", "sha256", {"text": "abc", "repeat": 100000, "chunk": 25000})
    assert {"sha256": hashlib.sha256(b"abc" * 100000).hexdigest(), "bytes": 300000} == job["result"]
    progress = [e["data"]["done"] for e in cweb.job_events(job["job_uuid"]) if e["type"] == "progress"]
    assert [0, 75000, 150000, 225000, 300000] == progress
    endless = cweb.submit_job("job_hash", "sha256", {"text": "x" * 1000, "repeat": 10**12, "chunk": 1000})
    assert wait_for(lambda: any(e["type"] == "progress" for e in cweb.job_events(endless)), 20)
    t0 = time.monotonic()
    assert "canceled" == cweb.post(f"/jobs/{endless}/cancel", auth=True).json()["state"]
    assert time.monotonic() - t0 < 3


def test_examples_share_cache_defer_work_and_store_values(cweb: CwebServer) -> None:
    for name in ("cache_writer.c", "cache_reader.c", "deferred.c", "kvstore.c"):
        cweb.deploy(EXAMPLES / name)
    assert 404 == cweb.get("/greeting").status_code
    assert 201 == cweb.post("/greeting", content=b"hello from the writer").status_code
    assert "hello from the writer" == cweb.get("/greeting").text
    assert 200 == cweb.request("DELETE", "/greeting").status_code
    assert 404 == cweb.get("/greeting").status_code

    assert 202 == cweb.post("/deferred/now", content=b"first").status_code
    assert 202 == cweb.post("/deferred/later", params={"ms": 200}, content=b"second").status_code
    assert wait_for(lambda: cweb.get("/deferred/log").text == "now: first\nlater: second\n", 5)

    assert 201 == cweb.post("/kv/colour", content=b"blue").status_code
    assert 201 == cweb.post("/kv/shape", content=b"round").status_code
    assert "blue" == cweb.get("/kv/colour").text
    assert {"colour": "blue", "shape": "round"} == cweb.get("/kv").json()
    assert 200 == cweb.request("DELETE", "/kv/colour").status_code
    assert 404 == cweb.get("/kv/colour").status_code
    assert 404 == cweb.get("/kv/no-such-key").status_code
    # Its cweb_docs table: /docs shows the regex routes as /kv/{key}, example "colour".
    get = cweb.get("/openapi.json").json()["paths"]["/kv/{key}"]["get"]
    assert ("The value of a key", "colour") == (get["summary"], get["parameters"][0]["example"])


def test_example_echo_socket(cweb: CwebServer) -> None:
    """example/websocket.c under its own name and path: every message comes back prefixed."""
    assert [{"path": "/websocket"}] == cweb.deploy(EXAMPLES / "websocket.c")["websockets"]
    with cweb.websocket("/websocket") as ws:
        for text in ("hello", "ünïcode", "x" * 10000):
            ws.send(text)
            assert f"You: {text}" == ws.recv(timeout=10)


def test_module_data_does_not_outlive_the_test(cweb: CwebServer) -> None:
    """The clean-up the plugin promises: kvstore's database (modules-data/kvstore/) is gone after a reset."""
    cweb.deploy(EXAMPLES / "kvstore.c")
    assert 201 == cweb.post("/kv/left", content=b"over").status_code
    assert (cweb.data_dir / "modules-data" / "kvstore").is_dir()
    cweb.reset()
    assert not (cweb.data_dir / "modules-data" / "kvstore").exists()
    cweb.deploy(EXAMPLES / "kvstore.c")
    assert 404 == cweb.get("/kv/left").status_code
