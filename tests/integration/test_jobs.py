"""Durable jobs against a real server and a real database: SQLite files, or
PostgreSQL under CWEB_TEST_DATABASE=postgres (tests/databases.py).

Every test talks HTTP or WebSocket to a real `python -m api` subprocess (the
session `server`, or its own from `make_server` where it needs a restart or
other settings). Job code is real C compiled by the server and run in real
worker processes; the state lives in the server's `jobs.db` (or its database). The session
server is shared, so module names and route paths are made unique.

The "lab" module below defines one job per behaviour under test, plus routes
that expose what the tests need to see from inside the worker (its pid, the
calls of the cancel hook, `jobs_create` from a route and from `onload`).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.conftest import ROOT, SPIN_JOB, WORKER_TOKEN_C, Server, unique
from tests.databases import jobs_rows

TERMINAL = ("done", "failed", "canceled")
JOB_FIELDS = {"job_uuid", "module", "job", "state", "module_hash", "created_at", "updated_at", "result", "error"}
LIST_FIELDS = {"job_uuid", "state", "module", "job", "module_hash", "updated_at"}
EVENT_FIELDS = {"job_uuid", "event_id", "ts", "ts_ms", "type", "data"}

LAB = r"""
#include <cweb.h>
#include <unistd.h>

static pthread_mutex_t lab_lock = PTHREAD_MUTEX_INITIALIZER;
static int cancel_calls;
static char cancel_last[64];
static int onload_rc = 99;

static json_t *payload_of(const job_payload_t *p) {
    json_error_t err;
    return json_loadb(p->json, p->json_len, 0, &err);
}

static long long int_field(const job_payload_t *p, const char *key, long long fallback) {
    json_t *root = payload_of(p);
    json_t *v = root ? json_object_get(root, key) : NULL;
    long long out = json_is_integer(v) ? json_integer_value(v) : fallback;
    json_decref(root);
    return out;
}

/* echo: the result is the payload. */
static int run_echo(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx;
    job->set_result(job, p->json);
    return 0;
}

/* emit {"n": N}: N progress events and one custom "note", then {"emitted": N}. */
static int run_emit(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx;
    long long n = int_field(p, "n", 3);
    for (long long i = 1; i <= n; i++)
        job->progress(job, (double)i, (double)n);
    job->emit_event(job, "note", "{\"hello\": \"world\"}");
    char out[64];
    snprintf(out, sizeof(out), "{\"emitted\": %lld}", n);
    job->set_result(job, out);
    return 0;
}

/* fail: set_error and -1, as a module reports failure. */
static int run_fail(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p;
    job->set_error(job, "boom: deliberate failure");
    return -1;
}

/* nap {"ms": M}: sleeps M ms, deaf to cancellation. */
static int run_nap(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx;
    long long ms = int_field(p, "ms", 100);
    usleep((useconds_t)(ms * 1000));
    char out[64];
    snprintf(out, sizeof(out), "{\"slept_ms\": %lld}", ms);
    job->set_result(job, out);
    return 0;
}

""" + SPIN_JOB + r"""

static void cancel_spin(struct cweb_context *ctx, const char *job_uuid) {
    (void)ctx;
    pthread_mutex_lock(&lab_lock);
    cancel_calls++;
    snprintf(cancel_last, sizeof(cancel_last), "%s", job_uuid);
    pthread_mutex_unlock(&lab_lock);
}

/* crashy: attempt 1 sleeps 30 s (to be killed); later attempts finish at once. */
static int run_crashy(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p;
    if (job->attempt == 1)
        usleep(30 * 1000 * 1000);
    char out[64];
    snprintf(out, sizeof(out), "{\"attempt\": %d}", job->attempt);
    job->set_result(job, out);
    return 0;
}

/* impostor: emits events named like the server's own, then finishes. */
static int run_impostor(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p;
    job->emit_event(job, "done", "{\"fake\": true}");
    job->emit_event(job, "started", "{}");
    job->emit_event(job, "note", "not json at all");
    job->set_result(job, "{\"real\": true}");
    return 0;
}

/* half: sets a result, then reports failure by returning -1. */
static int run_half(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p;
    job->set_result(job, "{\"partial\": true}");
    return -1;
}

/* tick {"i": I}: one progress event, then returns what set_result returned
 * (the pattern of issue 14's race: an event just before the end frame). */
static int run_tick(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx;
    long long i = int_field(p, "i", -1);
    job->progress(job, 1.0, 1.0);
    char buf[64];
    snprintf(buf, sizeof(buf), "{\"i\": %lld}", i);
    return job->set_result(job, buf);
}

/* bare_fail: returns 7 without setting anything. */
static int run_bare_fail(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p; (void)job;
    return 7;
}

/* first {"error_first": 1}: set_error then set_result (else the reverse), then
 * a second of each; emits what the two later calls returned. */
static int run_first(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx;
    int a, b;
    if (int_field(p, "error_first", 0)) {
        job->set_error(job, "first error");
        a = job->set_result(job, "{\"late\": true}");
        b = job->set_error(job, "second error");
    } else {
        job->set_result(job, "{\"first\": true}");
        a = job->set_error(job, "late error");
        b = job->set_result(job, "{\"second\": true}");
    }
    char data[64];
    snprintf(data, sizeof(data), "{\"later\": [%d, %d]}", a, b);
    job->emit_event(job, "later", data);
    return 0;
}

/* plain: a result that is not JSON. */
static int run_plain(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p;
    return job->set_result(job, "plain text, not JSON");
}

/* quiet: succeeds without setting a result. */
static int run_quiet(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p; (void)job;
    return 0;
}

static int pid_route(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%lld", worker_token);
    res->status = HTTP_200_OK;
    return 0;
}

static int cancels_route(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    pthread_mutex_lock(&lab_lock);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "{\"calls\": %d, \"last\": \"%s\"}", cancel_calls, cancel_last);
    pthread_mutex_unlock(&lab_lock);
    http_kv_insert(res->headers, "Content-Type", strdup("application/json"));
    res->status = HTTP_200_OK;
    return 0;
}

/* POST ?job=NAME with a JSON body: jobs_create(NAME, body) from a route. */
static int create_route(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    const char *name = http_kv_get(req->params, "job");
    cweb_uuid_t id;
    memset(&id, 0, sizeof(id));
    int rc = jobs_create(name ? name : "echo", req->content_length ? req->body : "{}", &id);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "{\"rc\": %d, \"job_uuid\": \"%s\"}", rc, rc == 0 ? uuid_c_str(&id) : "");
    http_kv_insert(res->headers, "Content-Type", strdup("application/json"));
    res->status = HTTP_200_OK;
    return 0;
}

static int onload_route(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "{\"rc\": %d, \"jobs\": %d}", onload_rc, ctx->jobs != NULL);
    http_kv_insert(res->headers, "Content-Type", strdup("application/json"));
    res->status = HTTP_200_OK;
    return 0;
}

static void lab_onload(struct cweb_context *ctx) {
    (void)ctx;
    cweb_uuid_t id;
    onload_rc = jobs_create("echo", "{}", &id);
}

export module_t config = {
    .name = "@NAME@", .author = "tests",
    .routes = {
        {"/@NAME@/pid", "GET", pid_route, NONE},
        {"/@NAME@/cancels", "GET", cancels_route, NONE},
        {"/@NAME@/create", "POST", create_route, NONE},
        {"/@NAME@/onload", "GET", onload_route, NONE},
    },
    .size = 4,
    .jobs = {
        {"echo", run_echo, NULL},
        {"emit", run_emit, NULL},
        {"fail", run_fail, NULL},
        {"nap", run_nap, NULL},
        {"spin", run_spin, cancel_spin},
        {"crashy", run_crashy, NULL},
        {"impostor", run_impostor, NULL},
        {"half", run_half, NULL},
        {"quiet", run_quiet, NULL},
        {"tick", run_tick, NULL},
        {"bare_fail", run_bare_fail, NULL},
        {"first", run_first, NULL},
        {"plain", run_plain, NULL},
    },
    .job_size = 13,
    .onload = lab_onload,
};
"""

# A module whose only job answers its version tag after sleeping {"ms": M}.
TAGGED = r"""
#include <cweb.h>
#include <unistd.h>
static int run_tagged(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx;
    json_error_t err;
    json_t *root = json_loadb(p->json, p->json_len, 0, &err);
    json_t *ms = root ? json_object_get(root, "ms") : NULL;
    if (json_is_integer(ms))
        usleep((useconds_t)(json_integer_value(ms) * 1000));
    json_decref(root);
    job->set_result(job, "{\"tag\": \"@TAG@\"}");
    return 0;
}
export module_t config = {
    .name = "@NAME@", .author = "tests",
    .jobs = { {"@JOB@", run_tagged, NULL} }, .job_size = 1,
};
"""


# ---------------------------------------------------------------------------
# helpers


@dataclass
class Lab:
    server: Server
    name: str
    module_hash: str


def deploy_ok(server: Server, source: str) -> dict:
    r = server.deploy(source)
    assert 200 == r.status_code, r.text
    return r.json()


def lab_source(name: str) -> str:
    return LAB.replace("@NAME@", name).replace("#include <unistd.h>\n", "#include <unistd.h>\n" + WORKER_TOKEN_C, 1)


def tagged_source(name: str, tag: str, job: str = "tagged") -> str:
    return TAGGED.replace("@NAME@", name).replace("@TAG@", tag).replace("@JOB@", job)


def deploy_lab(server: Server, prefix: str = "lab") -> Lab:
    name = unique(prefix)
    return Lab(server, name, deploy_ok(server, lab_source(name))["module_hash"])


def post_job(server: Server, module: str, job: str, payload: Any = None, headers: dict | None = None, **extra: Any) -> httpx.Response:
    body = {"module": module, "job": job, "payload": {} if payload is None else payload, **extra}
    with server.client() as c:
        return c.post("/jobs", json=body, headers=headers or {})


def submit(server: Server, module: str, job: str, payload: Any = None, **extra: Any) -> str:
    r = post_job(server, module, job, payload, **extra)
    assert 200 == r.status_code, r.text
    return r.json()["job_uuid"]


def get_job(server: Server, job_uuid: str) -> dict:
    with server.client() as c:
        r = c.get(f"/jobs/{job_uuid}")
    assert 200 == r.status_code, r.text
    return r.json()


def wait_job(server: Server, job_uuid: str, states: tuple[str, ...] = TERMINAL, timeout: float = 30.0) -> dict:
    """Poll until the job is in one of `states`; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    with server.client() as c:
        while True:
            job = c.get(f"/jobs/{job_uuid}").json()
            if job.get("state") in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_uuid} still {job.get('state')} after {timeout} s, wanted {states}")
            time.sleep(0.05)


def events(server: Server, job_uuid: str, since: int = 0) -> list[dict]:
    with server.client() as c:
        r = c.get(f"/jobs/{job_uuid}/events", params={"since_event_id": since})
    assert 200 == r.status_code, r.text
    return r.json()["events"]


def wait_event(server: Server, job_uuid: str, kind: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in events(server, job_uuid):
            if ev["type"] == kind:
                return ev
        time.sleep(0.05)
    raise AssertionError(f"job {job_uuid} emitted no {kind!r} event in {timeout} s")


def types(evs: list[dict]) -> list[str]:
    return [e["type"] for e in evs]


def terminal_count(evs: list[dict]) -> int:
    return sum(1 for e in evs if e["type"] in TERMINAL)


def ws_url(server: Server, job_uuid: str, since: int | None = None, close_on_end: bool = True) -> str:
    url = server.url.replace("http://", "ws://") + f"/jobs/ws?id={job_uuid}" + ("&close_on_end=1" if close_on_end else "")
    return url if since is None else f"{url}&since_event_id={since}"


def ws_read_all(url: str, timeout: float = 30.0, on_open: Callable[[], None] | None = None) -> tuple[list[dict], int | None]:
    """Every message of a job socket until the server closes it; (messages, close code)."""
    received: list[dict] = []
    deadline = time.monotonic() + timeout
    with ws_connect(url, open_timeout=10, close_timeout=5) as ws:
        if on_open is not None:
            on_open()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"socket still open after {timeout} s; got {types(received)}")
                received.append(json.loads(ws.recv(timeout=left)))
        except ConnectionClosed:
            pass
        code = ws.close_code
    return received, code


def route(server: Server, method: str, path: str, **kw: Any) -> httpx.Response:
    with server.client() as c:
        return c.request(method, path, **kw)


def worker_pid(server: Server, module: str, timeout: float = 20.0) -> int:
    """The host pid of the module's serving worker (its sandbox's outer
    process: killing it kills the worker), once the module answers /pid."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = route(server, "GET", f"/{module}/pid")
            if r.status_code == 200:
                token = r.text
                workers = route(server, "GET", "/_cweb/workers").json()["workers"]
                pids = [w["pid"] for w in workers if w["module"] == module and w["version_state"] == "active"]
                # The token still the same: the process listed is the one that answered.
                if len(pids) == 1 and route(server, "GET", f"/{module}/pid").text == token:
                    return pids[0]
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"module {module} does not answer /pid")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def lab(server: Server) -> Lab:
    """The lab module on the session server."""
    return deploy_lab(server)


# ---------------------------------------------------------------------------
# lifecycle and wire shapes


def test_post_jobs_answers_uuid_state_and_module_hash(lab: Lab) -> None:
    """POST /jobs -> {job_uuid, state, module_hash}; the hash is the deployed artifact's."""
    r = post_job(lab.server, lab.name, "echo", {"a": 1})
    assert 200 == r.status_code, r.text
    body = r.json()
    assert {"job_uuid", "state", "module_hash"} <= set(body)
    assert lab.module_hash == body["module_hash"]
    assert body["state"] in ("pending", "running", "done")
    assert 36 == len(body["job_uuid"])


def test_get_job_has_every_field_and_the_result_object(lab: Lab) -> None:
    """GET /jobs/{uuid} of a finished job carries every c-web-modules field; result is the JSON object set."""
    payload = {"a": 1, "s": "text", "nested": {"list": [1, 2, 3]}}
    job_uuid = submit(lab.server, lab.name, "echo", payload)
    job = wait_job(lab.server, job_uuid)
    assert JOB_FIELDS <= set(job)
    assert "done" == job["state"]
    assert payload == job["result"]
    assert job["error"] is None
    assert (job_uuid, lab.name, "echo", lab.module_hash) == (job["job_uuid"], job["module"], job["job"], job["module_hash"])
    assert job["created_at"] <= job["updated_at"]
    assert 1 == job["attempts"]


def test_events_are_created_started_done_with_payload_and_result(lab: Lab) -> None:
    """The stored events: created (data = payload), started, done (data = result), ids increasing."""
    payload = {"x": 42}
    job_uuid = submit(lab.server, lab.name, "echo", payload)
    wait_job(lab.server, job_uuid)
    evs = events(lab.server, job_uuid)
    assert ["created", "started", "done"] == types(evs)
    assert all(EVENT_FIELDS <= set(e) and e["job_uuid"] == job_uuid for e in evs)
    assert payload == evs[0]["data"]
    assert payload == evs[-1]["data"]
    ids = [e["event_id"] for e in evs]
    assert sorted(ids) == ids and len(set(ids)) == len(ids)
    assert [e["ts"] for e in evs] == sorted(e["ts"] for e in evs)


def test_module_events_are_stored_in_order_between_started_and_done(lab: Lab) -> None:
    """progress() and emit_event() become events between started and the one terminal event."""
    job_uuid = submit(lab.server, lab.name, "emit", {"n": 4})
    job = wait_job(lab.server, job_uuid)
    assert {"emitted": 4} == job["result"]
    evs = events(lab.server, job_uuid)
    assert ["created", "started", "progress", "progress", "progress", "progress", "note", "done"] == types(evs)
    assert [1, 2, 3, 4] == [e["data"]["done"] for e in evs if e["type"] == "progress"]
    assert {"hello": "world"} == evs[-2]["data"]


def test_ws_replays_every_event_from_zero_then_closes(lab: Lab) -> None:
    """WS since_event_id=0 on a finished job: every stored event in order, exactly one terminal, then a normal close."""
    job_uuid = submit(lab.server, lab.name, "emit", {"n": 3})
    wait_job(lab.server, job_uuid)
    got, code = ws_read_all(ws_url(lab.server, job_uuid, 0))
    assert events(lab.server, job_uuid) == got
    assert 1 == terminal_count(got) and "done" == got[-1]["type"]
    assert 1000 == code


def test_ws_stays_open_after_the_terminal_event_unless_asked_to_close(lab: Lab) -> None:
    """As c-web-modules: without close_on_end the socket outlives the job until the client leaves."""
    job_uuid = submit(lab.server, lab.name, "emit", {"n": 1})
    wait_job(lab.server, job_uuid)
    got = []
    with ws_connect(ws_url(lab.server, job_uuid, 0, close_on_end=False), open_timeout=10, close_timeout=5) as ws:
        while not got or got[-1]["type"] not in TERMINAL:
            got.append(json.loads(ws.recv(timeout=10)))
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.0)  # still open, nothing more to say
        ws.send("ping")  # the client may still talk; the server ignores it
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)
    assert ["created", "started", "progress", "note", "done"] == types(got)


def test_ws_replays_from_a_middle_event_id(lab: Lab) -> None:
    """since_event_id=N sends only events with id > N."""
    job_uuid = submit(lab.server, lab.name, "emit", {"n": 3})
    wait_job(lab.server, job_uuid)
    stored = events(lab.server, job_uuid)
    middle = stored[3]["event_id"]
    got, _ = ws_read_all(ws_url(lab.server, job_uuid, middle))
    assert stored[4:] == got
    assert [e for e in stored if e["event_id"] > middle] == got


def test_ws_without_since_replays_everything(lab: Lab) -> None:
    """since_event_id defaults to 0."""
    job_uuid = submit(lab.server, lab.name, "echo", {"k": 1})
    wait_job(lab.server, job_uuid)
    got, _ = ws_read_all(ws_url(lab.server, job_uuid))
    assert ["created", "started", "done"] == types(got)


def test_ws_live_subscriber_gets_events_as_they_happen(lab: Lab) -> None:
    """A socket opened while the job waits gets the stored events, then live ones up to the terminal event."""
    job_uuid = submit(lab.server, lab.name, "nap", {"ms": 300}, delay_s=0.7)
    seen_state: list[str] = []
    got, code = ws_read_all(ws_url(lab.server, job_uuid, 0), on_open=lambda: seen_state.append(get_job(lab.server, job_uuid)["state"]))
    assert ["pending"] == seen_state
    assert ["created", "started", "done"] == types(got)
    assert {"slept_ms": 300} == got[-1]["data"]
    assert 1000 == code


def test_two_live_subscribers_both_get_the_terminal_event(lab: Lab) -> None:
    """Every subscriber of a job gets the same stream."""
    job_uuid = submit(lab.server, lab.name, "emit", {"n": 2}, delay_s=0.5)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: ws_read_all(ws_url(lab.server, job_uuid, 0))[0], range(2)))
    assert results[0] == results[1]
    assert "done" == results[0][-1]["type"] and 1 == terminal_count(results[0])


def test_ndjson_follow_streams_until_the_terminal_event(lab: Lab) -> None:
    """GET /jobs/{uuid}/events?follow=1 is newline-delimited JSON that ends after the terminal event."""
    job_uuid = submit(lab.server, lab.name, "nap", {"ms": 300})
    lines = []
    with httpx.Client(base_url=lab.server.url, timeout=30) as c:
        with c.stream("GET", f"/jobs/{job_uuid}/events", params={"follow": 1}) as r:
            assert 200 == r.status_code
            assert r.headers["content-type"].startswith("application/x-ndjson")
            for line in r.iter_lines():
                if line:
                    lines.append(json.loads(line))
    assert ["created", "started", "done"] == types(lines)
    assert events(lab.server, job_uuid) == lines


def test_list_by_state_pages_with_limit_and_cursor(lab: Lab) -> None:
    """GET /jobs?state=done&limit=2 pages through every done job with next_cursor, newest first, no repeats."""
    module = unique("pages")
    deploy_ok(lab.server, lab_source(module))
    mine = [submit(lab.server, module, "echo", {"i": i}) for i in range(5)]
    for job_uuid in mine:
        wait_job(lab.server, job_uuid)
    seen: list[dict] = []
    cursor = None
    with lab.server.client() as c:
        for _ in range(10):
            params: dict[str, Any] = {"state": "done", "limit": 2, "module": module}
            if cursor is not None:
                params["cursor"] = cursor
            r = c.get("/jobs", params=params)
            assert 200 == r.status_code, r.text
            page = r.json()
            assert len(page["jobs"]) <= 2
            seen.extend(page["jobs"])
            cursor = page.get("next_cursor")
            if cursor is None:
                break
        unfiltered = c.get("/jobs", params={"state": "done", "limit": 3}).json()["jobs"]
    assert sorted(mine) == sorted(j["job_uuid"] for j in seen)
    assert list(reversed(mine)) == [j["job_uuid"] for j in seen]
    assert all(LIST_FIELDS <= set(j) and "done" == j["state"] and module == j["module"] for j in seen)
    assert 0 < len(unfiltered) <= 3 and {"done"} == {j["state"] for j in unfiltered}


def test_list_pending_shows_a_delayed_job(lab: Lab) -> None:
    """GET /jobs?state=pending lists a delayed job; state=done does not."""
    job_uuid = submit(lab.server, lab.name, "echo", {}, delay_s=30)
    try:
        with lab.server.client() as c:
            pending = c.get("/jobs", params={"state": "pending", "limit": 1000}).json()["jobs"]
            done = c.get("/jobs", params={"state": "done", "limit": 1000}).json()["jobs"]
        assert job_uuid in {j["job_uuid"] for j in pending}
        assert job_uuid not in {j["job_uuid"] for j in done}
    finally:
        route(lab.server, "POST", f"/jobs/{job_uuid}/cancel")


@pytest.mark.parametrize(
    "params, code",
    [({"state": "finished"}, "invalid_state"), ({"limit": 0}, "invalid_limit"), ({"limit": "x"}, "invalid_limit"), ({"cursor": "abc"}, "invalid_cursor")],
)
def test_list_rejects_bad_query_with_400_json(server: Server, params: dict, code: str) -> None:
    """Bad list parameters are a 400 with a JSON error code."""
    r = route(server, "GET", "/jobs", params=params)
    assert 400 == r.status_code, r.text
    assert code == r.json()["error"]


# ---------------------------------------------------------------------------
# cancel, failure, timeout


def test_cancel_pending_delayed_job(lab: Lab) -> None:
    """Cancel of a pending job -> {job_uuid, state: canceled} at once; it never starts; one terminal event."""
    job_uuid = submit(lab.server, lab.name, "echo", {}, delay_s=30)
    t0 = time.monotonic()
    r = route(lab.server, "POST", f"/jobs/{job_uuid}/cancel")
    assert 200 == r.status_code, r.text
    assert {"job_uuid": job_uuid, "state": "canceled"} == r.json()
    assert time.monotonic() - t0 < 2
    assert "canceled" == get_job(lab.server, job_uuid)["state"]
    assert ["created", "canceled"] == types(events(lab.server, job_uuid))


def test_cancel_running_job_calls_the_hook_and_sets_the_flag(lab: Lab) -> None:
    """Cancel of a running job: the module's cancel hook runs, is_canceled() turns true, the job ends canceled."""
    job_uuid = submit(lab.server, lab.name, "spin", {})
    wait_event(lab.server, job_uuid, "progress")
    t0 = time.monotonic()
    r = route(lab.server, "POST", f"/jobs/{job_uuid}/cancel")
    elapsed = time.monotonic() - t0
    assert 200 == r.status_code, r.text
    assert {"job_uuid": job_uuid, "state": "canceled"} == r.json()
    assert elapsed < 3, "the job honours is_canceled: no grace period should be needed"
    hook = route(lab.server, "GET", f"/{lab.name}/cancels").json()
    assert hook["calls"] >= 1 and job_uuid == hook["last"]
    evs = events(lab.server, job_uuid)
    assert 1 == terminal_count(evs) and "canceled" == evs[-1]["type"]
    job = get_job(lab.server, job_uuid)
    assert ("canceled", None) == (job["state"], job["result"])


def test_cancel_hook_runs_once_per_cancel_request(lab: Lab) -> None:
    """A second cancel of the same job is a 409 and does not call the hook again."""
    before = route(lab.server, "GET", f"/{lab.name}/cancels").json()["calls"]
    job_uuid = submit(lab.server, lab.name, "spin", {})
    wait_event(lab.server, job_uuid, "progress")
    assert "canceled" == route(lab.server, "POST", f"/jobs/{job_uuid}/cancel").json()["state"]
    again = route(lab.server, "POST", f"/jobs/{job_uuid}/cancel")
    assert 409 == again.status_code
    assert before + 1 == route(lab.server, "GET", f"/{lab.name}/cancels").json()["calls"]


def test_cancel_of_a_finished_job_is_409_json(lab: Lab) -> None:
    job_uuid = submit(lab.server, lab.name, "echo", {})
    wait_job(lab.server, job_uuid)
    r = route(lab.server, "POST", f"/jobs/{job_uuid}/cancel")
    assert 409 == r.status_code
    assert "job_finished" == r.json()["error"]
    assert "done" == get_job(lab.server, job_uuid)["state"]


def test_failed_job_reports_its_error(lab: Lab) -> None:
    """set_error + return -1 -> failed with that error; the terminal event is `failed` with the error as data."""
    job_uuid = submit(lab.server, lab.name, "fail", {})
    job = wait_job(lab.server, job_uuid)
    assert ("failed", "boom: deliberate failure", None) == (job["state"], job["error"], job["result"])
    evs = events(lab.server, job_uuid)
    assert ["created", "started", "failed"] == types(evs)
    assert "boom: deliberate failure" == evs[-1]["data"]


def test_failing_job_is_retried_up_to_max_attempts_with_backoff(lab: Lab) -> None:
    """max_attempts=3: three attempts, a retry event (with its backoff) before each repeat, one terminal `failed`."""
    job_uuid = submit(lab.server, lab.name, "fail", {}, max_attempts=3)
    job = wait_job(lab.server, job_uuid)
    assert ("failed", 3, "boom: deliberate failure") == (job["state"], job["attempts"], job["error"])
    evs = events(lab.server, job_uuid)
    assert ["created", "started", "retry", "started", "retry", "started", "failed"] == types(evs)
    first, second = evs[2], evs[4]
    assert (1, 2) == (first["data"]["attempt"], second["data"]["attempt"])
    assert 0.25 <= first["data"]["delay_s"] <= 0.5
    assert 0.5 <= second["data"]["delay_s"] <= 1.0
    # Each attempt starts at least its backoff after the previous one started (and failed).
    assert evs[3]["ts_ms"] - evs[1]["ts_ms"] >= 1000 * first["data"]["delay_s"] - 1
    assert evs[5]["ts_ms"] - evs[3]["ts_ms"] >= 1000 * second["data"]["delay_s"] - 1


def test_returning_nonzero_after_set_result_keeps_the_result(lab: Lab) -> None:
    """As c-web-modules: set_result decided the outcome; the -1 returned after it changes nothing."""
    job = wait_job(lab.server, submit(lab.server, lab.name, "half", {}))
    assert ("done", {"partial": True}, None) == (job["state"], job["result"], job["error"])


def test_returning_zero_without_a_result_is_done_with_an_empty_object(lab: Lab) -> None:
    """As c-web-modules: no result is {}."""
    job_uuid = submit(lab.server, lab.name, "quiet", {})
    job = wait_job(lab.server, job_uuid)
    assert ("done", {}, None) == (job["state"], job["result"], job["error"])
    evs = events(lab.server, job_uuid)
    assert ["created", "started", "done"] == types(evs)
    assert {} == evs[-1]["data"]


def test_returning_nonzero_without_a_result_fails_the_job(lab: Lab) -> None:
    job = wait_job(lab.server, submit(lab.server, lab.name, "bare_fail", {}))
    assert ("failed", None, "the job returned 7") == (job["state"], job["result"], job["error"])


def test_the_first_of_set_result_and_set_error_decides(lab: Lab) -> None:
    """set_error then set_result ends failed with the first error; set_result then set_error ends done
    with the first result; every later call returns -1 (the job reports what the calls returned)."""
    job = wait_job(lab.server, submit(lab.server, lab.name, "first", {"error_first": 1}))
    assert ("failed", "first error") == (job["state"], job["error"])
    assert {"later": [-1, -1]} == events(lab.server, job["job_uuid"])[2]["data"]
    job = wait_job(lab.server, submit(lab.server, lab.name, "first", {}))
    assert ("done", {"first": True}, None) == (job["state"], job["result"], job["error"])
    assert {"later": [-1, -1]} == events(lab.server, job["job_uuid"])[2]["data"]


def test_a_result_that_is_not_json_is_kept_as_a_string(lab: Lab) -> None:
    job_uuid = submit(lab.server, lab.name, "plain", {})
    job = wait_job(lab.server, job_uuid)
    assert ("done", "plain text, not JSON") == (job["state"], job["result"])
    assert "plain text, not JSON" == events(lab.server, job_uuid)[-1]["data"]


def test_timestamps_in_job_answers_and_events_are_integers(lab: Lab) -> None:
    """jansson's json_integer_value() reads a float as 0: every time a client reads is an integer."""
    job_uuid = submit(lab.server, lab.name, "emit", {"n": 1}, delay_s=0.2)
    job = wait_job(lab.server, job_uuid)
    for key in ("created_at", "updated_at", "run_after"):
        assert type(job[key]) is int, key
    with lab.server.client() as c:
        listed = c.get("/jobs", params={"module": lab.name, "limit": 5}).json()["jobs"]
    assert listed and all(type(j["created_at"]) is int and type(j["updated_at"]) is int for j in listed)
    evs = events(lab.server, job_uuid)
    ws_evs, _ = ws_read_all(ws_url(lab.server, job_uuid, 0))
    for ev in evs + ws_evs:
        assert type(ev["ts"]) is int and type(ev["ts_ms"]) is int and ev["ts"] == ev["ts_ms"] // 1000


def test_module_events_named_like_server_events_cannot_end_the_job(lab: Lab) -> None:
    """A module emitting "done" or "started" gets them renamed (module_done, ...): exactly one terminal event,
    written by the server; event data that is not JSON is stored as a JSON string."""
    job_uuid = submit(lab.server, lab.name, "impostor", {})
    job = wait_job(lab.server, job_uuid)
    assert ("done", {"real": True}) == (job["state"], job["result"])
    evs = events(lab.server, job_uuid)
    assert ["created", "started", "module_done", "module_started", "note", "done"] == types(evs)
    assert "not json at all" == evs[4]["data"]
    assert 1 == terminal_count(evs)


def test_cancel_of_a_job_that_ignores_it_replaces_the_worker(server: Server) -> None:
    """A running job that never checks is_canceled(): after the grace period its worker is replaced,
    the job ends canceled, and the module serves again."""
    lab = deploy_lab(server, "deaf")
    pid = worker_pid(server, lab.name)
    job_uuid = submit(server, lab.name, "nap", {"ms": 60000})
    wait_event(server, job_uuid, "started")
    time.sleep(0.2)
    t0 = time.monotonic()
    r = route(server, "POST", f"/jobs/{job_uuid}/cancel")
    elapsed = time.monotonic() - t0
    assert {"job_uuid": job_uuid, "state": "canceled"} == r.json()
    assert 4.5 <= elapsed < 20
    evs = events(server, job_uuid)
    assert 1 == terminal_count(evs) and "canceled" == evs[-1]["type"]
    assert pid != worker_pid(server, lab.name)
    assert {"after": 1} == wait_job(server, submit(server, lab.name, "echo", {"after": 1}))["result"]


def test_timeout_fails_the_job_and_replaces_the_worker(server: Server) -> None:
    """A job past timeout_s fails with `timed out`; its worker is replaced and the module serves again."""
    lab = deploy_lab(server, "tmo")
    pid = worker_pid(server, lab.name)
    t0 = time.monotonic()
    job_uuid = submit(server, lab.name, "nap", {"ms": 60000}, timeout_s=1)
    job = wait_job(server, job_uuid, timeout=20)
    assert "failed" == job["state"]
    assert "timed out" in job["error"]
    assert time.monotonic() - t0 < 10
    assert 1 == terminal_count(events(server, job_uuid))
    new_pid = worker_pid(server, lab.name)
    assert pid != new_pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    after = submit(server, lab.name, "echo", {"again": True})
    assert {"again": True} == wait_job(server, after)["result"]


def test_worker_killed_mid_job_is_retried_to_done(server: Server) -> None:
    """SIGKILL of the worker during attempt 1: the job is retried and done on a later attempt, one terminal event."""
    lab = deploy_lab(server, "kill")
    job_uuid = submit(server, lab.name, "crashy", {}, max_attempts=3)
    wait_event(server, job_uuid, "started")
    time.sleep(0.2)
    os.kill(worker_pid(server, lab.name), signal.SIGKILL)
    job = wait_job(server, job_uuid, timeout=30)
    assert "done" == job["state"], job
    assert job["attempts"] >= 2
    assert {"attempt": job["attempts"]} == job["result"]
    evs = events(server, job_uuid)
    assert 1 == terminal_count(evs) and "done" == evs[-1]["type"]
    assert "retry" in types(evs)


def test_worker_killed_on_the_last_attempt_fails_the_job(server: Server) -> None:
    """With no attempts left, a worker crash fails the job (never left running)."""
    lab = deploy_lab(server, "kill1")
    job_uuid = submit(server, lab.name, "crashy", {})
    wait_event(server, job_uuid, "started")
    time.sleep(0.2)
    os.kill(worker_pid(server, lab.name), signal.SIGKILL)
    job = wait_job(server, job_uuid, timeout=30)
    assert ("failed", 1) == (job["state"], job["attempts"])
    assert "crash" in job["error"]
    assert 1 == terminal_count(events(server, job_uuid))


def test_server_killed_mid_job_recovers_on_restart(make_server, tmp_path: Path) -> None:
    """SIGKILL of the server during a job; on restart with the same data dir a job with attempts left is
    re-run to done, one with none left is failed (neither is left running), and a delayed job still runs."""
    data = tmp_path / "data"
    s = make_server(data_dir=data)
    lab = deploy_lab(s, "srv")
    retried = submit(s, lab.name, "crashy", {}, max_attempts=2)
    last = submit(s, lab.name, "crashy", {}, max_attempts=1)
    delayed = submit(s, lab.name, "echo", {"later": True}, delay_s=3)
    wait_event(s, retried, "started")
    wait_event(s, last, "started")
    running = dict(jobs_rows(s, "SELECT job_uuid, state FROM jobs WHERE job_uuid IN (?, ?)", retried, last))
    assert {retried: "running", last: "running"} == running
    s.stop(signal.SIGKILL)

    s2 = make_server(data_dir=data)
    done = wait_job(s2, retried, timeout=30)
    failed = wait_job(s2, last, timeout=30)
    assert ("done", 2, {"attempt": 2}) == (done["state"], done["attempts"], done["result"])
    assert ("failed", 1) == (failed["state"], failed["attempts"])
    assert "interrupted" in failed["error"]
    assert lab.module_hash == done["module_hash"]
    later = wait_job(s2, delayed, timeout=30)
    assert ("done", {"later": True}) == (later["state"], later["result"])
    for job_uuid in (retried, last, delayed):
        evs = events(s2, job_uuid)
        assert 1 == terminal_count(evs)
        assert evs[-1]["type"] in TERMINAL
    assert [(0,)] == jobs_rows(s2, "SELECT COUNT(*) FROM jobs WHERE state = 'running'")


def test_graceful_stop_lets_a_running_job_finish(make_server, tmp_path: Path) -> None:
    """SIGTERM while a short job runs: the job finishes (done, one attempt) before the server exits."""
    data = tmp_path / "data"
    s = make_server(data_dir=data)
    lab = deploy_lab(s, "grace")
    job_uuid = submit(s, lab.name, "nap", {"ms": 1500})
    wait_event(s, job_uuid, "started")
    s.stop(signal.SIGTERM)
    [(state, attempts, result)] = jobs_rows(s, "SELECT state, attempts, result FROM jobs WHERE job_uuid = ?", job_uuid)
    assert ("done", 1, {"slept_ms": 1500}) == (state, attempts, json.loads(result))


CRASHER = r"""
#include <cweb.h>
static int crash(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req; (void)res;
    volatile int *p = NULL;
    *p = 1;
    return 0;
}
static int run_ok(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p;
    job->set_result(job, "{}");
    return 0;
}
export module_t config = {
    .name = "@NAME@", .author = "tests",
    .routes = { {"/@NAME@/crash", "GET", crash, NONE} }, .size = 1,
    .jobs = { {"ok", run_ok, NULL} }, .job_size = 1,
};
"""


def test_a_quarantined_module_refuses_new_jobs_with_503(server: Server) -> None:
    """After repeated crashes the module is quarantined; POST /jobs for it is a 503 JSON error."""
    name = unique("crasher")
    deploy_ok(server, CRASHER.replace("@NAME@", name))
    deadline = time.monotonic() + 60
    while route(server, "GET", f"/modules/{name}").json()["state"] != "quarantined":
        assert time.monotonic() < deadline, "the module was never quarantined"
        route(server, "GET", f"/{name}/crash")
    r = post_job(server, name, "ok", {})
    assert 503 == r.status_code, r.text
    assert "quarantined" == r.json()["error"]


# ---------------------------------------------------------------------------
# pinning, idempotency, delay, priority


def test_hot_swap_pins_running_and_queued_jobs_to_their_version(server: Server) -> None:
    """A job running on v1 (and one queued on v1) finish with v1's result after v2 is deployed;
    new jobs use v2's hash; every job's module_hash is the exact artifact it ran on."""
    name = unique("pin")
    v1 = deploy_ok(server, tagged_source(name, "v1"))
    running = submit(server, name, "tagged", {"ms": 1500})
    queued = submit(server, name, "tagged", {"ms": 0}, delay_s=1.0)
    wait_job(server, running, ("running",))
    v2 = deploy_ok(server, tagged_source(name, "v2"))
    assert v1["module_hash"] != v2["module_hash"]
    fresh_r = post_job(server, name, "tagged", {"ms": 0})
    assert v2["module_hash"] == fresh_r.json()["module_hash"]
    fresh = wait_job(server, fresh_r.json()["job_uuid"])
    old = wait_job(server, running)
    old_queued = wait_job(server, queued)
    assert ("done", {"tag": "v2"}, v2["module_hash"]) == (fresh["state"], fresh["result"], fresh["module_hash"])
    assert ("done", {"tag": "v1"}, v1["module_hash"]) == (old["state"], old["result"], old["module_hash"])
    assert ("done", {"tag": "v1"}, v1["module_hash"]) == (old_queued["state"], old_queued["result"], old_queued["module_hash"])
    assert v2["module_hash"] == route(server, "GET", f"/modules/{name}").json()["module_hash"]


def test_post_jobs_without_module_runs_the_one_module_that_has_the_job(server: Server) -> None:
    """As c-web-modules: the job name alone picks the module when exactly one active module declares it;
    409 naming the modules when several do; 404 when none does."""
    job = unique("only")
    owner = unique("owner")
    deploy_ok(server, tagged_source(owner, "solo", job))
    with server.client() as c:
        r = c.post("/jobs", json={"job": job, "payload": {}})
        assert 200 == r.status_code, r.text
        assert "done" == wait_job(server, r.json()["job_uuid"])["state"]
        assert owner == get_job(server, r.json()["job_uuid"])["module"]
        second = unique("owner")
        deploy_ok(server, tagged_source(second, "duo", job))
        r = c.post("/jobs", json={"job": job})
        assert 409 == r.status_code, r.text
        assert "ambiguous_job" == r.json()["error"]
        assert sorted([owner, second]) == r.json()["modules"]
        assert owner in r.json()["message"] and second in r.json()["message"]
        r = c.post("/jobs", json={"job": unique("nobody")})
        assert (404, "job_not_found") == (r.status_code, r.json()["error"])


def test_idempotency_key_is_scoped_to_the_module_and_the_job(lab: Lab) -> None:
    """The same key for another job or another module is another submission: a different job."""
    key = {"Idempotency-Key": unique("scoped")}
    first = post_job(lab.server, lab.name, "echo", {"a": 1}, headers=key).json()
    other_job = post_job(lab.server, lab.name, "quiet", {}, headers=key).json()
    other = deploy_lab(lab.server, "idem")
    other_module = post_job(lab.server, other.name, "echo", {"a": 1}, headers=key).json()
    again = post_job(lab.server, lab.name, "echo", {"a": 1}, headers=key).json()
    assert first["created"] and other_job["created"] and other_module["created"] and not again["created"]
    assert len({first["job_uuid"], other_job["job_uuid"], other_module["job_uuid"]}) == 3
    assert first["job_uuid"] == again["job_uuid"]
    assert other.name == get_job(lab.server, other_module["job_uuid"])["module"]


def test_idempotency_key_returns_the_same_job(lab: Lab) -> None:
    """The same Idempotency-Key gives the same job (not a second one); another key gives another job."""
    key = unique("idem")
    first = post_job(lab.server, lab.name, "echo", {"n": 1}, headers={"Idempotency-Key": key})
    second = post_job(lab.server, lab.name, "echo", {"n": 1}, headers={"Idempotency-Key": key})
    other = post_job(lab.server, lab.name, "echo", {"n": 1}, headers={"Idempotency-Key": key + "x"})
    assert 200 == first.status_code == second.status_code == other.status_code
    assert first.json()["job_uuid"] == second.json()["job_uuid"]
    assert first.json()["job_uuid"] != other.json()["job_uuid"]
    assert (True, False) == (first.json()["created"], second.json()["created"])
    wait_job(lab.server, first.json()["job_uuid"])
    assert 1 == len([e for e in events(lab.server, first.json()["job_uuid"]) if e["type"] == "created"])


def test_concurrent_submissions_with_one_idempotency_key_make_one_job(lab: Lab) -> None:
    key = unique("idem")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post_job(lab.server, lab.name, "echo", {}, headers={"Idempotency-Key": key}).json(), range(16)))
    assert 1 == len({a["job_uuid"] for a in answers})
    assert 1 == sum(1 for a in answers if a["created"])


def test_delayed_job_runs_after_its_time(lab: Lab) -> None:
    """delay_s=1: pending at first, started no earlier than one second after it was created."""
    job_uuid = submit(lab.server, lab.name, "echo", {"late": 1}, delay_s=1.0)
    assert "pending" == get_job(lab.server, job_uuid)["state"]
    job = wait_job(lab.server, job_uuid, timeout=15)
    assert "done" == job["state"]
    evs = {e["type"]: e for e in events(lab.server, job_uuid)}
    assert evs["started"]["ts_ms"] - evs["created"]["ts_ms"] >= 990
    assert job["run_after"] - job["created_at"] in (0, 1, 2)


def test_priority_orders_queued_jobs_when_the_pool_is_full(make_server) -> None:
    """With the only job thread busy, queued jobs start by priority (higher first), then in submission order."""
    s = make_server(env={"CWEB_JOB_THREADS": "1"})
    lab = deploy_lab(s, "prio")
    blocker = submit(s, lab.name, "spin", {})
    wait_event(s, blocker, "progress")
    order = [("low", 0), ("high", 10), ("low", 0), ("mid", 5), ("high", 10)]
    uuids = [(label, submit(s, lab.name, "echo", {"label": label}, priority=prio)) for label, prio in order]
    assert {"pending"} == {get_job(s, u)["state"] for _, u in uuids}
    assert "canceled" == route(s, "POST", f"/jobs/{blocker}/cancel").json()["state"]
    started = []
    for label, job_uuid in uuids:
        wait_job(s, job_uuid)
        started.append((wait_event(s, job_uuid, "started")["event_id"], label, job_uuid))
    assert ["high", "high", "mid", "low", "low"] == [label for _, label, _ in sorted(started)]
    assert [u for label, u in uuids if label == "high"] == [u for _, label, u in sorted(started) if label == "high"]
    assert [u for label, u in uuids if label == "low"] == [u for _, label, u in sorted(started) if label == "low"]


# ---------------------------------------------------------------------------
# jobs_create from module code


def test_jobs_create_from_a_route_starts_a_job_of_the_calling_module(lab: Lab) -> None:
    r = route(lab.server, "POST", f"/{lab.name}/create", params={"job": "echo"}, content=b'{"from": "route"}')
    assert 200 == r.status_code, r.text
    answer = r.json()
    assert 0 == answer["rc"]
    job = wait_job(lab.server, answer["job_uuid"])
    assert ("done", {"from": "route"}, lab.name, lab.module_hash) == (job["state"], job["result"], job["module"], job["module_hash"])


def test_jobs_create_resolves_a_name_to_the_single_module_defining_it(lab: Lab) -> None:
    other = unique("owner")
    job_name = unique("only")
    deployed = deploy_ok(lab.server, tagged_source(other, "elsewhere", job_name))
    answer = route(lab.server, "POST", f"/{lab.name}/create", params={"job": job_name}, content=b"{}").json()
    assert 0 == answer["rc"]
    job = wait_job(lab.server, answer["job_uuid"])
    assert (other, deployed["module_hash"], {"tag": "elsewhere"}) == (job["module"], job["module_hash"], job["result"])


def test_jobs_create_of_an_unknown_name_returns_minus_one(lab: Lab) -> None:
    answer = route(lab.server, "POST", f"/{lab.name}/create", params={"job": unique("nosuch")}, content=b"{}").json()
    assert -1 == answer["rc"]


def test_jobs_create_with_a_payload_that_is_not_an_object_returns_minus_one(lab: Lab) -> None:
    answer = route(lab.server, "POST", f"/{lab.name}/create", params={"job": "echo"}, content=b"[1, 2]").json()
    assert -1 == answer["rc"]


def test_jobs_create_from_onload_returns_minus_one(lab: Lab) -> None:
    """onload runs before the events channel is open: jobs_create fails with -1 instead of blocking."""
    assert -1 == route(lab.server, "GET", f"/{lab.name}/onload").json()["rc"]


def test_ctx_jobs_is_not_null_for_modules(lab: Lab) -> None:
    """Modules written for c-web-modules test ctx->jobs before they call jobs_create()."""
    assert 1 == route(lab.server, "GET", f"/{lab.name}/onload").json()["jobs"]


# ---------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"module": "no_such_module_xyz", "job": "echo", "payload": {}}, 404, "module_not_found"),
        ({"module": "@LAB@", "job": "no_such_job", "payload": {}}, 404, "job_not_found"),
        ({"module": "@LAB@", "job": "echo", "payload": [1, 2]}, 422, "invalid_payload"),
        ({"module": "@LAB@", "job": "echo", "payload": "text"}, 422, "invalid_payload"),
        ({"module": "@LAB@", "job": "echo", "payload": None}, 422, "invalid_payload"),
        ({"module": "@LAB@"}, 422, "invalid_job"),
        ({"module": "@LAB@", "job": "echo", "max_attempts": 0}, 422, "invalid_job"),
        ({"module": "@LAB@", "job": "echo", "timeout_s": -1}, 422, "invalid_job"),
        ({"module": "@LAB@", "job": "echo", "priority": "high"}, 422, "invalid_job"),
        ([1, 2], 422, "invalid_job"),
    ],
)
def test_bad_submissions_are_json_errors(lab: Lab, body: Any, status: int, code: str) -> None:
    text = json.dumps(body).replace("@LAB@", lab.name)
    r = route(lab.server, "POST", "/jobs", content=text.encode(), headers={"content-type": "application/json"})
    assert status == r.status_code, r.text
    assert code == r.json()["error"]
    assert r.json()["message"]


def test_malformed_json_is_400_json(server: Server) -> None:
    r = route(server, "POST", "/jobs", content=b'{"module": ', headers={"content-type": "application/json"})
    assert 400 == r.status_code
    assert "invalid_json" == r.json()["error"]


@pytest.mark.parametrize("method, path", [("GET", "/jobs/{u}"), ("POST", "/jobs/{u}/cancel"), ("GET", "/jobs/{u}/events"), ("GET", "/jobs/{u}/events?follow=1")])
def test_unknown_job_uuid_is_404_json(server: Server, method: str, path: str) -> None:
    r = route(server, method, path.format(u="00000000-0000-0000-0000-000000000000"))
    assert 404 == r.status_code
    assert "job_not_found" == r.json()["error"]


def test_ws_of_an_unknown_job_sends_an_error_and_closes(server: Server) -> None:
    got, code = ws_read_all(ws_url(server, "00000000-0000-0000-0000-000000000000", 0))
    assert [{"error": "job_not_found"}] == [{"error": m.get("error")} for m in got]
    assert 1008 == code


def test_ws_with_a_bad_since_event_id_is_refused(lab: Lab) -> None:
    job_uuid = submit(lab.server, lab.name, "echo", {})
    got, code = ws_read_all(ws_url(lab.server, job_uuid).replace("?id=", "?since_event_id=x&id="))
    assert "invalid_since_event_id" == got[0]["error"]
    assert 1008 == code


# ---------------------------------------------------------------------------
# volume


def test_a_thousand_concurrent_submissions_all_finish_done(server: Server) -> None:
    """1,000 jobs submitted by 32 concurrent clients: 1,000 distinct uuids, every one done, none lost."""
    lab = deploy_lab(server, "many")
    count, clients = 1000, 32

    def submit_many(worker: int) -> list[str]:
        out = []
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for i in range(worker, count, clients):
                r = c.post("/jobs", json={"module": lab.name, "job": "echo", "payload": {"i": i}})
                assert 200 == r.status_code, r.text
                out.append(r.json()["job_uuid"])
        return out

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        submitted = [u for chunk in pool.map(submit_many, range(clients)) for u in chunk]
    assert count == len(set(submitted))

    def done_jobs() -> dict[str, dict]:
        found: dict[str, dict] = {}
        cursor = None
        with server.client() as c:
            for _ in range(20):
                params: dict[str, Any] = {"state": "done", "module": lab.name, "limit": 1000}
                if cursor is not None:
                    params["cursor"] = cursor
                page = c.get("/jobs", params=params).json()
                found.update((j["job_uuid"], j) for j in page["jobs"])
                cursor = page["next_cursor"]
                if cursor is None:
                    break
        return found

    deadline = time.monotonic() + 60
    done = done_jobs()
    while len(done) < count and time.monotonic() < deadline:
        time.sleep(0.25)
        done = done_jobs()
    assert set(submitted) == set(done)
    with server.client() as c:
        for state in ("pending", "running", "failed", "canceled"):
            assert [] == c.get("/jobs", params={"state": state, "module": lab.name}).json()["jobs"]
        sample = [c.get(f"/jobs/{u}").json() for u in submitted[::97]]
    assert all({"i": int(j["result"]["i"])} == j["result"] and lab.module_hash == j["module_hash"] for j in sample)


def test_concurrent_jobs_that_emit_then_return_set_results_value_all_end_done(server: Server) -> None:
    """Issue 14: 640 jobs from 16 client threads, each emitting one event and
    returning set_result's value, once ended ~7 % `failed` with "the job
    returned 1879048192" (an event frame read as the end frame). Every one
    must end done with its own result and exactly one progress event."""
    lab = deploy_lab(server, "tick")
    count, clients = 640, 16

    def run_many(worker: int) -> list[tuple[int, str]]:
        out = []
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for i in range(worker, count, clients):
                r = c.post("/jobs", json={"module": lab.name, "job": "tick", "payload": {"i": i}})
                assert 200 == r.status_code, r.text
                out.append((i, r.json()["job_uuid"]))
        return out

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        submitted = [x for chunk in pool.map(run_many, range(clients)) for x in chunk]
    assert count == len({u for _, u in submitted})
    bad = []
    with server.client() as c:
        for i, job_uuid in submitted:
            deadline = time.monotonic() + 60
            job = c.get(f"/jobs/{job_uuid}").json()
            while job["state"] not in TERMINAL and time.monotonic() < deadline:
                time.sleep(0.05)
                job = c.get(f"/jobs/{job_uuid}").json()
            if job["state"] != "done" or job["result"] != {"i": i}:
                bad.append((job["state"], job["error"], job["result"]))
        assert [] == bad[:5], f"{len(bad)} of {count} jobs did not end done with their result"
        sample = c.get(f"/jobs/{submitted[0][1]}/events").json()["events"]
    assert ["created", "started", "progress", "done"] == types(sample)


# ---------------------------------------------------------------------------
# the cweb CLI against the real server


def cweb(server: Server, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "cweb"), "--server", server.url, *args],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_cli_submit_watch_prints_the_result_and_exits_0(lab: Lab, tmp_path: Path) -> None:
    p = cweb(lab.server, "jobs", "submit", lab.name, "emit", "--payload", '{"n": 2}', "--watch", cwd=tmp_path)
    assert 0 == p.returncode, p.stderr
    assert '"emitted": 2' in p.stdout
    assert "done" in p.stdout


def test_cli_submit_then_status_and_list(lab: Lab, tmp_path: Path) -> None:
    p = cweb(lab.server, "jobs", "submit", lab.name, "echo", "--payload", '{"cli": 1}', cwd=tmp_path)
    assert 0 == p.returncode, p.stderr
    job_uuid = p.stdout.strip().splitlines()[-1]
    assert "done" == wait_job(lab.server, job_uuid)["state"]
    status = cweb(lab.server, "jobs", "status", job_uuid, cwd=tmp_path)
    assert 0 == status.returncode, status.stderr
    assert job_uuid in status.stdout and "done" in status.stdout and '"cli": 1' in status.stdout
    listing = cweb(lab.server, "jobs", "list", "--state", "done", "--limit", "50", cwd=tmp_path)
    assert 0 == listing.returncode, listing.stderr
    assert job_uuid in listing.stdout
    as_json = cweb(lab.server, "--json", "jobs", "status", job_uuid, cwd=tmp_path)
    assert {"cli": 1} == json.loads(as_json.stdout)["result"]


def test_cli_cancel_of_a_pending_job(lab: Lab, tmp_path: Path) -> None:
    job_uuid = submit(lab.server, lab.name, "echo", {}, delay_s=30)
    p = cweb(lab.server, "jobs", "cancel", job_uuid, cwd=tmp_path)
    assert 0 == p.returncode, p.stderr
    assert f"{job_uuid} canceled" == p.stdout.strip()
    again = cweb(lab.server, "jobs", "cancel", job_uuid, cwd=tmp_path)
    assert 1 == again.returncode
    assert "canceled" == get_job(lab.server, job_uuid)["state"]


def test_cli_watch_of_a_failed_job_exits_1(lab: Lab, tmp_path: Path) -> None:
    p = cweb(lab.server, "jobs", "submit", lab.name, "fail", "--watch", cwd=tmp_path)
    assert 1 == p.returncode
    assert "boom: deliberate failure" in p.stdout


def test_cli_status_of_an_unknown_job_exits_1(server: Server, tmp_path: Path) -> None:
    p = cweb(server, "jobs", "status", "00000000-0000-0000-0000-000000000000", cwd=tmp_path)
    assert 1 == p.returncode
    assert "no job" in p.stderr
