"""Seeing into a real server: OpenAPI with live module routes, Prometheus
metrics, module logs, JSON server logs, and the `cweb` CLI end to end.

Metrics tests need exact deltas, so they share a server of their own
(`quiet`) that nothing else touches; the rest use the session `server`
with unique module names. Every module is real C compiled by gcc.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from websockets.sync.client import connect as ws_connect

from api import schemas
from tests.conftest import EXAMPLES, HANDLER, ROOT, SPIN_JOB, Server, free_port, module, route_module, unique

CLI = ROOT / "cweb"


# ---------------------------------------------------------------------------
# helpers




def printing_module(name: str, marker: str) -> str:
    """GET /NAME prints `marker` on stdout and `marker-err` on stderr, then answers ok."""
    code = f"""
{HANDLER.format(fn="say")} {{
    (void)ctx;
    printf("%s %s\\n", "{marker}", req->params ? (http_kv_get(req->params, "n") ? http_kv_get(req->params, "n") : "-") : "-");
    fprintf(stderr, "%s-err\\n", "{marker}");
    fflush(stderr);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "ok");
    res->status = HTTP_200_OK;
    return 0;
}}
"""
    return module(name, [(f"/{name}", "GET", "say")], code)


JOB_CODE = """
static int run_sum(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx;
    json_error_t err;
    json_t *root = json_loadb(p->json, p->json_len, 0, &err);
    long long n = root ? json_integer_value(json_object_get(root, "n")) : 0;
    json_decref(root);
    char out[64];
    snprintf(out, sizeof(out), "{\\"sum\\": %lld}", n * (n + 1) / 2);
    job->emit_event(job, "note", "{\\"half\\": true}");
    job->set_result(job, out);
    return 0;
}
""" + SPIN_JOB


def job_module(name: str) -> str:
    """Jobs `sum` ({"n": N} -> {"sum": ...}) and `spin` (runs until canceled)."""
    return f"""#include <cweb.h>
#include <unistd.h>
{JOB_CODE}
export module_t config = {{
    .name = "{name}", .author = "tests",
    .jobs = {{ {{"sum", run_sum, NULL}}, {{"spin", run_spin, NULL}} }}, .job_size = 2,
}};
"""


def echo_socket_module(name: str) -> str:
    """example/websocket.c under a unique name and path."""
    src = (EXAMPLES / "websocket.c").read_text()
    assert '.name = "websocket"' in src and '"/websocket"' in src
    return src.replace('.name = "websocket"', f'.name = "{name}"').replace('"/websocket"', f'"/{name}"')


def deployed(server: Server, source: str, filename: str = "module.c") -> dict:
    r = server.deploy(source, filename)
    assert 200 == r.status_code, r.text
    return r.json()


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll check() until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


Samples = dict[tuple[str, frozenset], float]


def scrape(server: Server) -> Samples:
    """Every sample of GET /metrics, parsed by prometheus-client's own parser."""
    with server.client() as c:
        r = c.get("/metrics")
    assert 200 == r.status_code
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def get(server: Server, path: str, **kw: Any) -> httpx.Response:
    with server.client() as c:
        return c.get(path, **kw)


def openapi(server: Server) -> dict:
    r = get(server, "/openapi.json")
    assert 200 == r.status_code
    return r.json()


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server only this file's metrics tests use, so counters move by exact amounts."""
    s = Server(tmp_path_factory.mktemp("observe") / "data").start()
    yield s
    s.stop()


# ---------------------------------------------------------------------------
# OpenAPI


def test_openapi_lists_a_module_route_right_after_deploy_and_drops_it_after_delete(server: Server) -> None:
    """Each live route appears with its method, path, module name and hash; DELETE removes it."""
    name = unique("doc")
    code = f"""
{HANDLER.format(fn="show")} {{ (void)ctx; (void)req; snprintf(res->body, HTTP_RESPONSE_SIZE, "x"); return 0; }}
{HANDLER.format(fn="take")} {{ (void)ctx; (void)req; snprintf(res->body, HTTP_RESPONSE_SIZE, "y"); return 0; }}
"""
    info = deployed(server, module(name, [(f"/{name}", "GET", "show"), (f"/{name}/item/[0-9]+", "POST", "take")], code))
    doc = openapi(server)

    op = doc["paths"][f"/{name}"]["get"]
    assert [f"module: {name}"] == op["tags"]
    assert name in op["summary"] and "GET" in op["summary"]
    assert f"`{name}`" in op["description"] and info["module_hash"] in op["description"]
    assert {"name": name, "module_hash": info["module_hash"]} == op["x-cweb-module"]
    post = doc["paths"][f"/{name}/item/{{p1}}"]["post"]
    assert "regular expression" in post["description"] and "requestBody" in post
    assert f"/{name}/item/[0-9]+" == post["x-cweb-route"]
    assert {f"module: {name}", "deploy", "jobs"} <= {t["name"] for t in doc["tags"]}

    with server.client() as c:
        assert 200 == c.delete(f"/modules/{name}").status_code
    doc = openapi(server)
    assert f"/{name}" not in doc["paths"]
    assert f"/{name}/item/{{p1}}" not in doc["paths"]
    assert f"module: {name}" not in {t["name"] for t in doc["tags"]}
    assert "post" in doc["paths"]["/mgnt"], "the control plane stays"


REGEX_ROUTES = [
    # (route path under /NAME, the example the docs must give, names of the path parameters)
    ("/items/([0-9]+)", "/items/1", ["p1"]),
    ("/u/[a-z]+/posts/([[:digit:]]{2,4})", "/u/a/posts/11", ["p1", "p2"]),
    ("/files/.*", "/files/a", ["p1"]),
    ("/f-([0-9]+)[.]json", "/f-1.json", ["p1"]),
    ("/(one|two)", "/one", ["p1"]),
]


def test_openapi_turns_regex_routes_into_templates_that_reach_the_module(server: Server) -> None:
    """Each regex route becomes a path template whose parameters, filled with
    their examples, give a path the module really answers (what "Try it out" sends)."""
    name = unique("docre")
    handlers = "\n".join(f'{HANDLER.format(fn=f"h{i}")} {{ (void)ctx; snprintf(res->body, HTTP_RESPONSE_SIZE, "route{i} %s", req->path); return 0; }}'
                         for i in range(len(REGEX_ROUTES)))
    deployed(server, module(name, [(f"/{name}{p}", "GET", f"h{i}") for i, (p, _, _) in enumerate(REGEX_ROUTES)], handlers))
    doc = openapi(server)
    mine = {op["x-cweb-route"]: (key, op) for key, ops in doc["paths"].items() for op in ops.values()
            if op.get("x-cweb-module", {}).get("name") == name}
    assert len(REGEX_ROUTES) == len(mine)
    with server.client() as c:
        for i, (route, example, names) in enumerate(REGEX_ROUTES):
            key, op = mine[f"/{name}{route}"]
            params = op.get("parameters", [])
            assert names == [p["name"] for p in params] and all(p["in"] == "path" and p["required"] for p in params)
            filled = key
            for p in params:
                filled = filled.replace("{" + p["name"] + "}", httpx.URL(p["example"]).raw_path.decode() if "/" not in p["example"] else p["example"])
            assert f"/{name}{example}" == filled
            r = c.get(filled)
            assert (200, f"route{i} /{name}{example}") == (r.status_code, r.text)
            assert f"`/{name}{route}`" in op["description"]


DOCUMENTED_MODULE = r"""#include <cweb.h>
static int item(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; snprintf(res->body, HTTP_RESPONSE_SIZE, "item %s", req->path); return 0;
}
static void chat_msg(struct cweb_context *ctx, websocket_t *ws, const char *msg, size_t len) {
    (void)ctx; (void)ws; (void)msg; (void)len;
}
static int sum(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p; job->set_result(job, "{}"); return 0;
}
const cweb_doc_t cweb_docs[] = {
    { .method = "GET", .path = "/NAME/items/([0-9]+)", .summary = "One item by number",
      .description = "Reads the item.", .example = "/NAME/items/42",
      .params = { { "id", "path", "the item's number", 1 }, { "fields", "query", "which fields", 0 } } },
    { .method = "WS", .path = "/NAME/chat", .summary = "A chat room", .example = "hello" },
    { .method = "JOB", .path = "sum", .summary = "Adds 1..n", .example = "{\"n\": 100}" },
    { .method = "GET", .path = "/NAME/nowhere", .summary = "not a route" },
    CWEB_DOCS_END
};
export module_t config = {
    .name = "NAME", .author = "tests",
    .routes = { { "/NAME/items/([0-9]+)", "GET", item, NONE } }, .size = 1,
    .websockets = { { "/NAME/chat", NULL, chat_msg, NULL } }, .ws_size = 1,
    .jobs = { { "sum", sum, NULL } }, .job_size = 1,
};
"""


def test_openapi_shows_what_a_module_says_about_its_routes_sockets_and_jobs(server: Server) -> None:
    """cweb_docs: the summary, description, example and named parameters of a
    route; the socket and the job (with its payload) in the module's tag; the
    job's payload as an example of POST /jobs; an entry naming nothing is a deploy warning."""
    name = unique("docsdk")
    info = deployed(server, DOCUMENTED_MODULE.replace("NAME", name))
    assert any("cweb_docs entry 3" in w["message"] and "names no route" in w["message"] for w in info["warnings"])
    doc = openapi(server)
    op = doc["paths"][f"/{name}/items/{{id}}"]["get"]
    assert "One item by number" == op["summary"] and op["description"].startswith("Reads the item.")
    assert [("id", "path", True, "42"), ("fields", "query", False, None)] == [
        (p["name"], p["in"], p["required"], p.get("example")) for p in op["parameters"]]
    assert "the item's number" == op["parameters"][0]["description"]
    with server.client() as c:
        assert "item /" + name + "/items/42" == c.get(f"/{name}/items/42").text
    tag = next(t for t in doc["tags"] if t["name"] == f"module: {name}")
    assert doc["tags"][0]["name"].startswith("module: "), "modules come first"
    assert f"`WS /{name}/chat` — A chat room; a message: `hello`" in tag["description"]
    assert "`sum` — Adds 1..n; payload `{\"n\": 100}`" in tag["description"]
    assert [{"path": f"/{name}/chat", "summary": "A chat room", "example": "hello", "params": []}] == tag["x-cweb-websockets"]
    examples = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert {"module": name, "job": "sum", "payload": {"n": 100}} == examples[f"{name}/sum"]["value"]


def test_openapi_follows_a_redeploy_to_the_new_hash(server: Server) -> None:
    """The description names the hash serving now, not the first one."""
    name = unique("docv")
    first = deployed(server, route_module(name, f"/{name}", body="one"))
    second = deployed(server, route_module(name, f"/{name}", body="two"))
    assert first["module_hash"] != second["module_hash"]
    description = openapi(server)["paths"][f"/{name}"]["get"]["description"]
    assert second["module_hash"] in description and first["module_hash"] not in description


# (method, path, request body media type or None, 200 schema name)
DOCUMENTED = [
    ("post", "/mgnt", "multipart/form-data", None),
    ("get", "/modules", None, "ModuleList"),
    ("get", "/modules/{name}", None, "ModuleInfo"),
    ("delete", "/modules/{name}", None, "Removed"),
    ("get", "/modules/{name}/versions", None, "VersionList"),
    ("post", "/modules/{name}/rollback", "application/json", "RollbackResult"),
    ("get", "/modules/{name}/logs", None, "LogTail"),
    ("get", "/artifacts/{module_hash}", None, "Artifact"),
    ("post", "/jobs", "application/json", "JobCreated"),
    ("get", "/jobs", None, "JobList"),
    ("get", "/jobs/{job_uuid}", None, "Job"),
    ("post", "/jobs/{job_uuid}/cancel", None, "JobCancel"),
    ("get", "/jobs/{job_uuid}/events", None, "JobEventList"),
    ("get", "/healthz", None, "Health"),
    ("get", "/_cweb/builds", None, "BuildList"),
    ("get", "/_cweb/workers", None, "WorkerList"),
]


@pytest.mark.parametrize(("method", "path", "body", "answer"), DOCUMENTED, ids=[f"{m} {p}" for m, p, _, _ in DOCUMENTED])
def test_control_plane_operations_document_request_and_response_schemas(server: Server, method: str, path: str, body: str | None,
                                                                        answer: str | None) -> None:
    """Control-plane operations carry real schemas (not bare 'object') and examples."""
    doc = openapi(server)
    components = doc["components"]["schemas"]
    op = doc["paths"][path][method]
    assert op["tags"] and not op["tags"][0].startswith("module: ")
    content = op["responses"]["200"]["content"]["application/json"]
    refs = [content["schema"]["$ref"]] if "$ref" in content["schema"] else [s["$ref"] for s in content["schema"]["oneOf"]]
    for ref in refs:
        schema = components[ref.rsplit("/", 1)[1]]
        assert schema["properties"] and schema.get("required"), ref
    if answer is not None:
        assert [f"#/components/schemas/{answer}"] == refs
    if body is not None:
        request = op["requestBody"]["content"][body]["schema"]["$ref"].rsplit("/", 1)[1]
        assert components[request]["required"]
    if method != "get" or path in ("/modules", "/jobs", "/healthz"):
        assert "example" in content
    for status, response in op["responses"].items():
        if status.startswith("4") and status != "422":
            assert "#/components/schemas/Error" == response["content"]["application/json"]["schema"]["$ref"]


def test_mgnt_documents_its_upload_field_and_compile_error_shape(server: Server) -> None:
    doc = openapi(server)
    op = doc["paths"]["/mgnt"]["post"]
    upload = doc["components"]["schemas"]["DeployUpload"]
    assert {"type": "string", "format": "binary"} == {k: upload["properties"]["code"][k] for k in ("type", "format")}
    assert ["code"] == upload["required"]
    assert {"DeployResult", "CheckResult"} == {r["$ref"].rsplit("/", 1)[1] for r in op["responses"]["200"]["content"]["application/json"]["schema"]["oneOf"]}
    example = op["responses"]["422"]["content"]["application/json"]["example"]
    assert "compile_failed" == example["error"] and example["diagnostics"][0]["line"] == 2
    assert {"file", "line", "column", "severity", "message"} <= set(doc["components"]["schemas"]["Diagnostic"]["properties"])
    assert any(p["name"] == "check" for p in op["parameters"])


def assert_shape(model: type[BaseModel], data: Any) -> None:
    """data validates against model, and every top-level key is documented by it."""
    model.model_validate(data)
    undocumented = set(data) - set(model.model_fields)
    assert not undocumented, f"{model.__name__} does not document {sorted(undocumented)}"


def test_control_plane_answers_match_their_documented_schemas(server: Server) -> None:
    """Real answers of each documented operation validate against the model the docs show."""
    name = unique("shape")
    info = deployed(server, printing_module(name, "shape-marker"))
    assert_shape(schemas.DeployResult, info)
    check = server.deploy(printing_module(name, "shape-marker"), params={"check": 1})
    assert 200 == check.status_code
    assert_shape(schemas.CheckResult, check.json())
    get(server, f"/{name}")
    with server.client() as c:
        assert_shape(schemas.ModuleList, c.get("/modules").json())
        assert_shape(schemas.ModuleInfo, c.get(f"/modules/{name}").json())
        assert_shape(schemas.VersionList, c.get(f"/modules/{name}/versions").json())
        assert_shape(schemas.Health, c.get("/healthz").json())
        assert_shape(schemas.BuildList, c.get("/_cweb/builds").json())
        assert_shape(schemas.WorkerList, c.get("/_cweb/workers").json())
        alone = c.get("/_cweb/nodes").json()
        assert_shape(schemas.NodeList, alone)
        assert [info["module_hash"]] == [n["modules"][name] for n in alone["nodes"]]
        assert_shape(schemas.Artifact, c.get(f"/artifacts/{info['module_hash']}").json())
        logs = wait_for(lambda: (c.get(f"/modules/{name}/logs").json() if c.get(f"/modules/{name}/logs").json()["lines"] else None),
                        what="a log line")
        assert_shape(schemas.LogTail, logs)
        assert_shape(schemas.LogLine, logs["lines"][0])
        rolled = c.post(f"/modules/{name}/rollback", json={"module_hash": info["module_hash"]})
        assert 200 == rolled.status_code, rolled.text
        assert_shape(schemas.RollbackResult, rolled.json())
        bad = c.get(f"/modules/{unique('nosuch')}")
        assert 404 == bad.status_code
        assert_shape(schemas.Error, bad.json())
        compile_error = server.deploy("#include <cweb.h>\nint x = ;\n", "broken.c")
        assert 422 == compile_error.status_code
        assert_shape(schemas.Error, compile_error.json())

        jobs_name = unique("shapejobs")
        deployed(server, job_module(jobs_name))
        created = c.post("/jobs", json={"module": jobs_name, "job": "sum", "payload": {"n": 4}})
        assert 200 == created.status_code, created.text
        assert_shape(schemas.JobCreated, created.json())
        job_uuid = created.json()["job_uuid"]
        job = wait_for(lambda: (j := c.get(f"/jobs/{job_uuid}").json())["state"] == "done" and j, what="the job to finish")
        assert_shape(schemas.Job, job)
        assert {"sum": 10} == job["result"]
        listing = c.get("/jobs", params={"module": jobs_name}).json()
        assert_shape(schemas.JobList, listing)
        assert_shape(schemas.JobSummary, listing["jobs"][0])
        events = c.get(f"/jobs/{job_uuid}/events").json()
        assert_shape(schemas.JobEventList, events)
        for ev in events["events"]:
            assert_shape(schemas.JobEvent, ev)
        spin = c.post("/jobs", json={"module": jobs_name, "job": "spin"}).json()["job_uuid"]
        assert_shape(schemas.JobCancel, c.post(f"/jobs/{spin}/cancel").json())
        assert_shape(schemas.Removed, c.delete(f"/modules/{name}").json())


# ---------------------------------------------------------------------------
# metrics


def test_metrics_count_module_requests_by_status_with_latency(quiet: Server) -> None:
    """cweb_requests_total and the latency histogram move by exactly the traffic sent."""
    name = unique("met")
    code = f"""
{HANDLER.format(fn="ok")} {{ (void)ctx; (void)req; snprintf(res->body, HTTP_RESPONSE_SIZE, "ok"); res->status = HTTP_200_OK; return 0; }}
{HANDLER.format(fn="gone")} {{ (void)ctx; (void)req; snprintf(res->body, HTTP_RESPONSE_SIZE, "no"); res->status = HTTP_404_NOT_FOUND; return 0; }}
"""
    deployed(quiet, module(name, [(f"/{name}", "GET", "ok"), (f"/{name}/gone", "GET", "gone")], code))
    before = scrape(quiet)
    with quiet.client() as c:
        for _ in range(3):
            assert 200 == c.get(f"/{name}").status_code
        assert 404 == c.get(f"/{name}/gone").status_code
    after = scrape(quiet)
    route = f"/{name}"
    assert 3 == sample(after, "cweb_requests_total", module=name, route=route, status="200") - sample(before, "cweb_requests_total", module=name, route=route, status="200")
    assert 1 == sample(after, "cweb_requests_total", module=name, route=f"{route}/gone", status="404")
    assert 3 == sample(after, "cweb_request_seconds_count", module=name, route=route) - sample(before, "cweb_request_seconds_count", module=name, route=route)
    assert 3 == sample(after, "cweb_request_seconds_bucket", module=name, route=route, le="+Inf")
    assert 0 < sample(after, "cweb_request_seconds_sum", module=name, route=route) < 30
    assert sample(after, "cweb_modules") >= 1


def test_metrics_count_builds_by_outcome(quiet: Server) -> None:
    """A fresh source compiles, the same source again is a cache hit, a broken one fails."""
    name = unique("bld")
    source = route_module(name, f"/{name}")
    before = scrape(quiet)
    deployed(quiet, source)
    compiled = scrape(quiet)
    deployed(quiet, source)
    cached = scrape(quiet)
    assert 422 == quiet.deploy("#include <cweb.h>\nint broken = ;\n", "broken.c").status_code
    failed = scrape(quiet)

    def delta(a: Samples, b: Samples, outcome: str) -> float:
        return sample(b, "cweb_builds_total", outcome=outcome) - sample(a, "cweb_builds_total", outcome=outcome)

    assert (1, 0, 0) == (delta(before, compiled, "compiled"), delta(before, compiled, "cache_hit"), delta(before, compiled, "failed"))
    assert (0, 1, 0) == (delta(compiled, cached, "compiled"), delta(compiled, cached, "cache_hit"), delta(compiled, cached, "failed"))
    assert (0, 0, 1) == (delta(cached, failed, "compiled"), delta(cached, failed, "cache_hit"), delta(cached, failed, "failed"))
    assert 1 == sample(compiled, "cweb_build_seconds_count") - sample(before, "cweb_build_seconds_count")
    assert sample(cached, "cweb_build_seconds_count") == sample(compiled, "cweb_build_seconds_count"), "cache hits are not build time"
    assert sample(failed, "cweb_store_artifacts") >= 1 and sample(failed, "cweb_store_bytes") > 0
    assert sample(failed, "cweb_cache_capacity_bytes") > 0


def test_metrics_count_deploys_by_outcome_and_the_refusals_code(quiet: Server) -> None:
    """An activation, the same source again (unchanged), a route conflict, a bad regex, a compile error; a dry run is not a deploy."""
    name, other = unique("metdep"), unique("metdep2")
    before = scrape(quiet)
    deployed(quiet, route_module(name, f"/{name}"))
    deployed(quiet, route_module(name, f"/{name}"))
    assert 409 == quiet.deploy(route_module(other, f"/{name}")).status_code
    assert 422 == quiet.deploy(route_module(other, f"/{other}/[0-9")).status_code
    assert 422 == quiet.deploy("#include <cweb.h>\nint broken = ;\n", "broken.c").status_code
    with quiet.client() as c:
        assert 200 == c.post("/mgnt", params={"check": 1}, files={"code": ("m.c", route_module(unique("metdep3"), "/x3"))}).status_code
    after = scrape(quiet)

    def delta(outcome: str, error: str = "") -> float:
        return sample(after, "cweb_deploys_total", outcome=outcome, error=error) - sample(before, "cweb_deploys_total", outcome=outcome, error=error)

    assert (1, 1, 1, 1, 1) == (delta("activated"), delta("unchanged"), delta("rejected", "route_conflict"),
                               delta("rejected", "invalid_regex"), delta("build_failed", "compile_failed"))
    assert 5 == sum(v for (metric, _), v in after.items() if metric == "cweb_deploys_total") - sum(
        v for (metric, _), v in before.items() if metric == "cweb_deploys_total")


def test_metrics_job_gauges_follow_a_job_through_its_states(quiet: Server) -> None:
    """cweb_jobs{module,state} counts a running job, then a canceled one; the duration is observed under its module."""
    name = unique("metjobs")
    deployed(quiet, job_module(name))
    before = scrape(quiet)
    with quiet.client() as c:
        job_uuid = c.post("/jobs", json={"module": name, "job": "spin"}).json()["job_uuid"]
        wait_for(lambda: c.get(f"/jobs/{job_uuid}").json()["state"] == "running", what="the job to run")
        running = scrape(quiet)
        assert 200 == c.post(f"/jobs/{job_uuid}/cancel").status_code
    wait_for(lambda: sample(scrape(quiet), "cweb_jobs", module=name, state="canceled") == 1, what="the canceled gauge")
    after = scrape(quiet)
    assert 0 == sample(before, "cweb_jobs", module=name, state="running")
    assert 1 == sample(running, "cweb_jobs", module=name, state="running")
    assert 0 == sample(after, "cweb_jobs", module=name, state="running")
    assert ("cweb_jobs", frozenset({"module": name, "state": "done"}.items())) in after, "every state of the module, zeros too"
    wait_for(lambda: sample(scrape(quiet), "cweb_job_seconds_count", module=name, state="canceled") == 1,
             what="the job duration to be observed")


def test_metrics_count_socket_connections_and_messages(quiet: Server) -> None:
    """cweb_ws_connections{module} is 1 while a client is connected, 0 after; messages count both ways."""
    name = unique("metws")
    deployed(quiet, echo_socket_module(name))
    before = scrape(quiet)
    assert 0 == sample(before, "cweb_ws_connections", module=name)
    with ws_connect(f"ws://127.0.0.1:{quiet.port}/{name}", open_timeout=30, compression=None) as ws:
        ws.send("hi")
        assert "You: hi" == ws.recv(timeout=10)
        during = scrape(quiet)
    assert 1 == sample(during, "cweb_ws_connections", module=name)
    assert 1 == sample(during, "cweb_ws_messages_total", module=name, direction="in")
    assert 1 == sample(during, "cweb_ws_messages_total", module=name, direction="out")
    assert 0 == sample(before, "cweb_ws_messages_total", module=name, direction="in")
    wait_for(lambda: sample(scrape(quiet), "cweb_ws_connections", module=name) == 0, what="the connection gauge to drop")


def test_metrics_count_a_worker_restart_after_a_crash(quiet: Server) -> None:
    """A segfaulting handler answers 502, its worker is restarted, and the restart is counted."""
    name = unique("metcrash")
    code = f"""
{HANDLER.format(fn="boom")} {{ (void)ctx; (void)req; (void)res; raise(SIGSEGV); return 0; }}
{HANDLER.format(fn="fine")} {{ (void)ctx; (void)req; snprintf(res->body, HTTP_RESPONSE_SIZE, "fine"); return 0; }}
"""
    deployed(quiet, module(name, [(f"/{name}/boom", "GET", "boom"), (f"/{name}", "GET", "fine")], code))
    module_hash = get(quiet, f"/modules/{name}").json()["module_hash"]
    assert 0 == sample(scrape(quiet), "cweb_worker_restarts_total", module=name, module_hash=module_hash)
    with quiet.client() as c:
        assert 502 == c.get(f"/{name}/boom").status_code
        wait_for(lambda: c.get(f"/modules/{name}").json()["state"] == "active" and c.get(f"/{name}").status_code == 200,
                 what="the module to be back")
        workers = [w for w in c.get("/_cweb/workers").json()["workers"] if w["module"] == name]
    after = scrape(quiet)
    assert 1 == sample(after, "cweb_worker_restarts_total", module=name, module_hash=module_hash)
    assert 1 == sample(after, "cweb_requests_total", module=name, route=f"/{name}/boom", status="502")
    assert 0 == sample(after, "cweb_quarantines_total", module=name, module_hash=module_hash)
    assert 1 == sample(after, "cweb_module_info", module=name, module_hash=module_hash, state="active")
    assert [1] == [w["restarts"] for w in workers]


def test_metrics_count_a_quarantine_after_repeated_crashes(quiet: Server) -> None:
    """Five crashes within a minute quarantine the module: counted once, 503 after, restarts counted before."""
    name = unique("metquar")
    code = f"""
{HANDLER.format(fn="boom")} {{ (void)ctx; (void)req; (void)res; raise(SIGSEGV); return 0; }}
"""
    module_hash = deployed(quiet, module(name, [(f"/{name}", "GET", "boom")], code))["module_hash"]
    with quiet.client() as c:
        for _ in range(20):
            state = wait_for(lambda: (s := c.get(f"/modules/{name}").json()["state"]) in ("active", "quarantined") and s,
                             what="the module to be back")
            if state == "quarantined":
                break
            assert c.get(f"/{name}").status_code in (502, 503)
        assert "quarantined" == c.get(f"/modules/{name}").json()["state"]
        assert 503 == c.get(f"/{name}").status_code
    after = scrape(quiet)
    assert 1 == sample(after, "cweb_quarantines_total", module=name, module_hash=module_hash)
    assert 4 == sample(after, "cweb_worker_restarts_total", module=name, module_hash=module_hash)
    assert 1 == sample(after, "cweb_module_info", module=name, module_hash=module_hash, state="quarantined")


def test_metrics_count_unmatched_requests_by_reason_without_the_path(quiet: Server) -> None:
    """A 404, a 405 and a refused socket upgrade are counted by reason; the path is never a label."""
    name = unique("metmiss")
    deployed(quiet, route_module(name, f"/{name}"))
    before = scrape(quiet)
    with quiet.client() as c:
        for i in range(3):
            assert 404 == c.get(f"/{name}-nothing-{i}").status_code
        assert 405 == c.post(f"/{name}").status_code
        assert 200 == c.get(f"/{name}").status_code
    with pytest.raises(Exception):  # noqa: B017 - refused before accept: an HTTP 403 to the client
        ws_connect(f"ws://127.0.0.1:{quiet.port}/{name}-no-socket", open_timeout=30)
    after = scrape(quiet)

    def delta(reason: str) -> float:
        return sample(after, "cweb_unmatched_requests_total", reason=reason) - sample(before, "cweb_unmatched_requests_total", reason=reason)

    assert (3, 1, 1) == (delta("no_route"), delta("method_not_allowed"), delta("no_socket"))
    text = get(quiet, "/metrics").text
    assert "-nothing-" not in text and "-no-socket" not in text


def test_metrics_expose_build_info_process_metrics_and_loaded_versions(quiet: Server) -> None:
    """cweb_build_info names the version and ABI; process_* come from the api process; every loaded version has an info series."""
    name = unique("metinfo")
    first = deployed(quiet, route_module(name, f"/{name}", body="one"))["module_hash"]
    second = deployed(quiet, route_module(name, f"/{name}", body="two"))["module_hash"]
    samples = scrape(quiet)
    info = [dict(labels) for (metric, labels) in samples if metric == "cweb_build_info"]
    assert 1 == len(info) and info[0]["abi"] == "1" and info[0]["version"] not in ("", "unknown")
    assert 1 == samples[("cweb_build_info", frozenset(info[0].items()))]
    assert sample(samples, "process_resident_memory_bytes") > 10 << 20
    assert sample(samples, "process_open_fds") > 3
    assert sample(samples, "process_cpu_seconds_total") > 0
    assert 1 == sample(samples, "cweb_module_info", module=name, module_hash=second, state="active")
    assert 0 == sample(samples, "cweb_module_info", module=name, module_hash=first, state="active")


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs of a text/event-stream, comments skipped."""
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            yield kind, json.loads(line[len("data: "):])


def test_events_stream_tells_deploys_builds_requests_and_crashes(server: Server) -> None:
    """GET /_cweb/events: hello, then a build, the activation, request totals that moved, the crash and the restart."""
    name = unique("evfeed")
    code = f"""
{HANDLER.format(fn="boom")} {{ (void)ctx; (void)req; (void)res; raise(SIGSEGV); return 0; }}
{HANDLER.format(fn="fine")} {{ (void)ctx; (void)req; snprintf(res->body, HTTP_RESPONSE_SIZE, "fine"); return 0; }}
"""
    seen: list[tuple[str, dict]] = []
    with httpx.Client(base_url=server.url, timeout=30) as c, c.stream("GET", "/_cweb/events") as r:
        assert 200 == r.status_code
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
        seen.append(next(events))
        assert "hello" == seen[0][0]
        module_hash = deployed(server, module(name, [(f"/{name}/boom", "GET", "boom"), (f"/{name}", "GET", "fine")], code))["module_hash"]
        for _ in range(3):
            assert 200 == c.get(f"/{name}").status_code
        assert 502 == c.get(f"/{name}/boom").status_code

        def mine(kind: str, event: str) -> bool:
            return any(k == kind and d.get("module") == name and d.get("event") == event for k, d in seen)

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (mine("module", "restarted")
                                                   and any(k == "stats" and d["modules"].get(name, {}).get("errors") == 1 for k, d in seen)):
            seen.append(next(events))
    kinds = [k for k, _ in seen]
    assert "build" in kinds
    assert mine("module", "activated") and mine("module", "crashed") and mine("module", "restarted")
    crash = next(d for k, d in seen if k == "module" and d.get("event") == "crashed" and d["module"] == name)
    assert module_hash == crash["module_hash"] and crash["reason"]  # a signal name or "exit status N" (through bwrap)
    totals = [d["modules"][name] for k, d in seen if k == "stats" and name in d["modules"]]
    assert totals[-1]["requests"] == 4 and totals[-1]["errors"] == 1 and totals[-1]["seconds"] > 0

    history = get(server, "/_cweb/history", params={"module": name}).json()["history"]
    assert ["restarted", "crashed"] == [h["event"] for h in history]
    assert all(h["module_hash"] == module_hash for h in history)


# ---------------------------------------------------------------------------
# module logs


def log_lines(server: Server, name: str, **params: Any) -> list[dict]:
    r = get(server, f"/modules/{name}/logs", params=params)
    assert 200 == r.status_code, r.text
    return r.json()["lines"]


def test_logs_capture_a_modules_printf_with_time_stream_and_hash(server: Server) -> None:
    """What a handler prints on stdout and stderr is listed with ts, stream and module_hash."""
    name = unique("logs")
    marker = unique("printed")
    info = deployed(server, printing_module(name, marker))
    t0 = time.time()
    assert 200 == get(server, f"/{name}", params={"n": "1"}).status_code
    lines = wait_for(lambda: (ls := log_lines(server, name)) and len(ls) >= 2 and ls, what="both lines")
    by_stream = {e["stream"]: e for e in lines}
    assert f"{marker} 1" == by_stream["stdout"]["line"]
    assert f"{marker}-err" == by_stream["stderr"]["line"]
    for entry in by_stream.values():
        assert info["module_hash"] == entry["module_hash"]
        assert t0 - 1 <= entry["ts"] <= time.time() + 1


def test_logs_tail_returns_the_newest_lines_oldest_first(server: Server) -> None:
    name = unique("tail")
    marker = unique("t")
    deployed(server, printing_module(name, marker))
    for n in range(3):
        get(server, f"/{name}", params={"n": str(n)})
    wait_for(lambda: len(log_lines(server, name)) >= 6, what="six lines")
    stdout = [e["line"] for e in log_lines(server, name) if e["stream"] == "stdout"]
    assert [f"{marker} 0", f"{marker} 1", f"{marker} 2"] == stdout
    assert 1 == len(log_lines(server, name, tail=1))
    assert [] == log_lines(server, name, tail=0)


def test_logs_of_an_unknown_module_are_a_404(server: Server) -> None:
    r = get(server, f"/modules/{unique('nosuch')}/logs")
    assert 404 == r.status_code
    assert "module_not_found" == r.json()["error"]


def test_logs_follow_streams_a_line_printed_after_the_request_started(server: Server) -> None:
    """?follow=1 answers NDJSON: the tail, then lines printed while the stream is open."""
    name = unique("follow")
    marker = unique("live")
    info = deployed(server, printing_module(name, marker))
    get(server, f"/{name}", params={"n": "before"})
    wait_for(lambda: log_lines(server, name), what="the first line")
    seen: list[dict] = []
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(30.0)) as c:
        with c.stream("GET", f"/modules/{name}/logs", params={"follow": 1, "tail": 10}) as r:
            assert 200 == r.status_code
            assert r.headers["content-type"].startswith("application/x-ndjson")
            lines = r.iter_lines()
            poke = threading.Timer(0.3, lambda: get(server, f"/{name}", params={"n": "after"}))
            poke.start()
            try:
                for raw in lines:
                    if raw.strip():
                        seen.append(json.loads(raw))
                    if any(e["line"] == f"{marker} after" for e in seen):
                        break
            finally:
                poke.cancel()
    stdout = [e["line"] for e in seen if e["stream"] == "stdout"]
    assert [f"{marker} before", f"{marker} after"] == stdout, "the tail once, then the new line, no duplicates"
    assert {info["module_hash"]} == {e["module_hash"] for e in seen}
    assert all(set(e) == {"ts", "stream", "module_hash", "line"} for e in seen)


# ---------------------------------------------------------------------------
# structured server logs


def test_json_server_logs_name_module_and_hash(make_server: Callable[..., Server]) -> None:
    """CWEB_LOG_JSON=1: the server writes JSON lines; builds, activations and module output carry module and hash."""
    s = make_server(env={"CWEB_LOG_JSON": "1"})
    name = unique("jlog")
    marker = unique("jmark")
    info = deployed(s, printing_module(name, marker))
    assert 200 == get(s, f"/{name}").status_code
    h = info["module_hash"]

    def records() -> list[dict]:
        out = []
        for line in s.logs().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    printed = wait_for(lambda: [r for r in records() if r.get("message") == f"{marker} -"], what="the module's line in the server log")
    assert {"logger": "cweb.module", "level": "DEBUG", "module": name, "module_hash": h, "stream": "stdout"} == {
        k: printed[0][k] for k in ("logger", "level", "module", "module_hash", "stream")}
    recs = records()
    activated = [r for r in recs if r.get("module") == name and r["logger"] == "cweb.api" and h in r["message"]]
    assert activated and activated[0]["module_hash"] == h
    built = [r for r in recs if r.get("module_hash") == h and r.get("outcome") == "compiled"]
    assert built and built[0]["file"] == "module.c"
    for r in recs:
        assert {"ts", "time", "level", "logger", "message"} <= set(r)
    plain = [line for line in s.logs().splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ [A-Z]+ ", line)]
    assert [] == plain, "no plain-text log lines in JSON mode"


def test_plain_server_logs_keep_module_output_out(quiet: Server) -> None:
    """Without CWEB_LOG_JSON the log stays human: no JSON, and module printf is read with `cweb logs`, not here."""
    name = unique("plain")
    marker = unique("pmark")
    deployed(quiet, printing_module(name, marker))
    get(quiet, f"/{name}")
    wait_for(lambda: log_lines(quiet, name), what="the line in the module log")
    text = quiet.logs()
    assert marker not in text
    assert not any(line.startswith("{") for line in text.splitlines())


# ---------------------------------------------------------------------------
# the cweb CLI against the real server


def cweb(*args: str, cwd: Path, server: Server | None = None, timeout: float = 120, python: list[str] | None = None,
         script: Path = CLI) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    env["NO_COLOR"] = "1"
    argv = [*(python or [sys.executable]), str(script)]
    if server is not None:
        argv += ["--server", server.url]
    return subprocess.run([*argv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_deploy_modules_versions_rollback_rm(server: Server, tmp_path: Path) -> None:
    name = unique("cli")
    (tmp_path / "one.c").write_text(route_module(name, f"/{name}", body="one"))
    (tmp_path / "two.c").write_text(route_module(name, f"/{name}", body="two"))

    first = cweb("deploy", "one.c", cwd=tmp_path, server=server)
    assert 0 == first.returncode, first.stderr
    assert re.search(rf"deployed {name} [0-9a-f]{{12}}  GET /{name}", first.stdout), first.stdout
    hash_one = get(server, f"/modules/{name}").json()["module_hash"]
    assert hash_one[:12] in first.stdout

    second = cweb("--json", "deploy", "two.c", cwd=tmp_path, server=server)
    assert 0 == second.returncode, second.stderr
    doc = json.loads(second.stdout)
    assert (name, hash_one) == (doc["name"], doc["previous_hash"])
    hash_two = doc["module_hash"]
    assert "two" == get(server, f"/{name}").text

    listed = cweb("modules", cwd=tmp_path, server=server)
    assert 0 == listed.returncode
    row = next(line for line in listed.stdout.splitlines() if line.startswith(name + " "))
    assert hash_two[:12] in row and "active" in row and f"GET /{name}" in row

    versions = cweb("versions", name, cwd=tmp_path, server=server)
    assert 0 == versions.returncode
    rows = [line for line in versions.stdout.splitlines() if hash_one in line or hash_two in line]
    assert 2 == len(rows) and rows[0].startswith("*") and hash_two in rows[0], versions.stdout

    rolled = cweb("rollback", name, hash_one[:10], cwd=tmp_path, server=server)
    assert 0 == rolled.returncode, rolled.stderr
    assert f"rolled back {name} {hash_one[:12]}" in rolled.stdout
    assert "one" == get(server, f"/{name}").text

    removed = cweb("rm", name, cwd=tmp_path, server=server)
    assert (0, f"removed {name}") == (removed.returncode, removed.stdout.strip())
    assert 404 == get(server, f"/{name}").status_code
    assert name not in cweb("modules", cwd=tmp_path, server=server).stdout


def test_cli_check_compiles_without_deploying(server: Server, tmp_path: Path) -> None:
    name = unique("clichk")
    (tmp_path / "ok.c").write_text(route_module(name, f"/{name}"))
    r = cweb("check", "ok.c", cwd=tmp_path, server=server)
    assert 0 == r.returncode, r.stderr
    assert r.stdout.startswith(f"ok ok.c would deploy as {name} ("), r.stdout
    assert f"GET /{name}" in r.stdout
    assert 404 == get(server, f"/modules/{name}").status_code, "check does not deploy"


def test_cli_compile_error_exits_1_with_gcc_style_diagnostics(server: Server, tmp_path: Path) -> None:
    (tmp_path / "bad.c").write_text("#include <cweb.h>\nint x = ;\n")
    for command in ("check", "deploy"):
        r = cweb(command, "bad.c", cwd=tmp_path, server=server)
        assert 1 == r.returncode, (command, r.stdout, r.stderr)
        assert "bad.c:2:9: error: expected expression before ';' token" in r.stderr
        assert "compile_failed" in r.stderr


def test_cli_unknown_module_exits_1(server: Server, tmp_path: Path) -> None:
    nosuch = unique("nosuch")
    for args in (("rm", nosuch), ("versions", nosuch), ("logs", nosuch), ("rollback", nosuch, "abcdef")):
        r = cweb(*args, cwd=tmp_path, server=server)
        assert 1 == r.returncode, (args, r.stderr)
        assert r.stderr.startswith("cweb: ") and "not_found" in r.stderr, r.stderr


def test_cli_unreachable_server_exits_3(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(CLI), "--server", f"http://127.0.0.1:{free_port()}", "modules"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert 3 == r.returncode
    assert "cannot reach" in r.stderr and "connection refused" in r.stderr


def test_cli_logs_prints_and_follows_module_output(server: Server, tmp_path: Path) -> None:
    name = unique("clilog")
    marker = unique("cm")
    info = deployed(server, printing_module(name, marker))
    get(server, f"/{name}", params={"n": "first"})
    wait_for(lambda: log_lines(server, name), what="a line")
    r = cweb("logs", name, cwd=tmp_path, server=server)
    assert 0 == r.returncode, r.stderr
    assert re.search(rf"\d\d:\d\d:\d\d {info['module_hash'][:8]} stdout {marker} first", r.stdout), r.stdout

    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    # Started with SIGINT ignored, as every background job of a non-interactive
    # shell is (a CI runner, `make test &`): it timed out there, because Python
    # installs no Ctrl-C handler then and the follower never ended.
    follower = subprocess.Popen([sys.executable, str(CLI), "--server", server.url, "logs", name, "-f", "-n", "0"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.extend(iter(follower.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        wait_for(lambda: get(server, f"/{name}", params={"n": "later"}) and any(f"{marker} later" in line for line in got),
                 what="the followed line", timeout=30)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
    assert f"{marker} first" not in "".join(got), "-n 0: only new lines"
    assert 130 == follower.returncode


def test_cli_sdk_headers_compile_a_module_locally(server: Server, tmp_path: Path) -> None:
    """`cweb sdk -o DIR` downloads headers that gcc accepts for a module, as the server compiles it."""
    r = cweb("sdk", "-o", "sdk", cwd=tmp_path, server=server)
    assert 0 == r.returncode, r.stderr
    include = r.stdout.strip()
    assert include.startswith("-I") and (Path(include[2:]) / "cweb.h").is_file()
    assert (Path(include[2:]) / "cweb.h").read_bytes() == get(server, "/sdk/cweb.h").content
    hello = tmp_path / "hello.c"
    hello.write_text(route_module("hello", "/hello"))
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed by the builder too"
    for source in (hello, EXAMPLES / "counter.c", EXAMPLES / "job_sum.c"):
        compiled = subprocess.run([gcc, "-std=gnu11", "-fsyntax-only", "-Wall", include, str(source)], capture_output=True, text=True, timeout=60)
        assert 0 == compiled.returncode, (source.name, compiled.stderr)
    broken = tmp_path / "broken.c"
    broken.write_text("#include <cweb.h>\nexport module_t config = { .nope = 1 };\n")
    assert 0 != subprocess.run([gcc, "-fsyntax-only", include, str(broken)], capture_output=True, timeout=60).returncode


def test_cli_jobs_submit_watch_status_list_cancel(server: Server, tmp_path: Path) -> None:
    name = unique("clijob")
    deployed(server, job_module(name))
    r = cweb("jobs", "submit", name, "sum", "--payload", '{"n": 10}', "--watch", cwd=tmp_path, server=server)
    assert 0 == r.returncode, r.stderr
    assert re.search(r"result:\s+\{\s*\"sum\": 55\s*\}", r.stdout), r.stdout
    assert " note {\"half\": true}" in r.stdout
    job_uuid = re.search(r"^job (\S+) \w+ on ", r.stdout, re.M).group(1)  # type: ignore[union-attr]
    status = cweb("jobs", "status", job_uuid, cwd=tmp_path, server=server)
    assert 0 == status.returncode and re.search(r"state:\s+done", status.stdout)
    listed = cweb("jobs", "list", "--state", "done", cwd=tmp_path, server=server)
    assert job_uuid in listed.stdout
    again = cweb("jobs", "cancel", job_uuid, cwd=tmp_path, server=server)
    assert 1 == again.returncode and "job_finished" in again.stderr


def test_cli_runs_from_a_fresh_clone_with_no_packages(server: Server, tmp_path: Path) -> None:
    """git clone, then the CLI under `python3 -I -S`: no site-packages, no environment, stdlib only."""
    name = unique("clone")
    deployed(server, route_module(name, f"/{name}"))
    clone = tmp_path / "x"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True, timeout=120)
    r = cweb("modules", cwd=tmp_path, server=server, python=[sys.executable, "-I", "-S"], script=clone / "cweb")
    assert 0 == r.returncode, r.stderr
    assert any(line.startswith(name + " ") for line in r.stdout.splitlines())
    sdk = cweb("sdk", "-o", "sdk", cwd=tmp_path, server=server, python=[sys.executable, "-I", "-S"], script=clone / "cweb")
    assert 0 == sdk.returncode, sdk.stderr
    with tarfile.open(fileobj=__import__("io").BytesIO(get(server, "/sdk.tar.gz").content)) as tar:
        assert {Path(n).name for n in tar.getnames() if n.endswith(".h")} == {p.name for p in (tmp_path / "sdk").rglob("*.h")}


def test_root_redirects_to_the_status_page(server: Server) -> None:
    r = get(server, "/", follow_redirects=False)
    assert (307, "/ui") == (r.status_code, r.headers["location"])
    page = get(server, "/ui")
    assert 200 == page.status_code and "<title>cweb status</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
