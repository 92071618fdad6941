"""The OpenAPI document: the control plane, with the schemas and examples of
api/schemas.py, plus the live module routes.

The control-plane handlers read raw requests and return plain dicts (no
pydantic on any request path), so FastAPI alone would document them as
"object". `CONTROL_PLANE` below says, per operation, what goes in and what
comes out; `document()` merges it into FastAPI's generated document once,
and `with_module_routes()` adds the routes of the modules deployed right
now on every call, so the document follows deploys and removals.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import route_examples
from api import schemas as s

API_DESCRIPTION = """cweb hosts C modules behind HTTP, WebSockets and jobs.

The control plane (`/mgnt`, `/modules`, `/jobs`, `/sdk`, `/metrics`, ...) is
documented below with its schemas. The modules deployed right now come first,
one tag per module (`module: NAME`) with its routes, sockets and jobs; they
change with every deploy. Regex routes are shown as path templates whose
parameters are the parts of the path that vary, filled with an example the
route matches, so "Try it out" reaches the module.

Errors are JSON `{"error": code, "message": text}` with a stable `code`;
compile errors add `diagnostics` and the raw compiler `log`. Job events also
stream over `WS /jobs/ws?id=UUID&since_event_id=N` (not shown: OpenAPI has no
WebSockets).
"""

LIVE_TAG = "modules (live)"
TAGS = [
    {"name": "deploy", "description": "Upload C, get an active module; the SDK for local compiles."},
    {"name": "modules", "description": "Active modules, their versions, rollback, removal and output."},
    {"name": "artifacts", "description": "Built artifacts by hash and where they came from."},
    {"name": "jobs", "description": "Durable jobs defined by modules."},
    {"name": "observability", "description": "Health, metrics, builds and workers."},
]

_REF = "#/components/schemas/{model}"

_MODULE = {
    "name": "hello", "author": "me", "module_hash": s.HASH, "source_sha256": s.SOURCE_HASH, "build_key": s.BUILD_KEY,
    "routes": [{"method": "GET", "path": "/hello"}], "websockets": [], "jobs": [], "deployed_at": 1767225600.0, "state": "active",
}
_JOB = {
    "job_uuid": s.JOB_UUID, "module": "job_sum", "job": "sum", "state": "done", "module_hash": s.HASH,
    "created_at": 1767225600, "updated_at": 1767225600, "attempts": 1,
}
_COMPILE_ERROR = {
    "error": "compile_failed", "message": "compilation failed: expected expression before ';' token",
    "diagnostics": [{"file": "hello.c", "line": 2, "column": 9, "severity": "error", "message": "expected expression before ';' token"}],
    "log": "hello.c:2:9: error: expected expression before ';' token\n    2 | int x = ;\n      |         ^\n",
}


def _json(model: type[BaseModel] | tuple[type[BaseModel], ...], example: Any = None) -> dict:
    return {"content": {"application/json": {"schema": _schema(model), **({"example": example} if example is not None else {})}}}


def _schema(model: type[BaseModel] | tuple[type[BaseModel], ...]) -> dict:
    if isinstance(model, tuple):
        return {"oneOf": [{"$ref": _REF.format(model=m.__name__)} for m in model]}
    return {"$ref": _REF.format(model=model.__name__)}


def _error(description: str, example: dict | None = None) -> dict:
    return {"description": description, **_json(s.Error, example)}


def _text(media: str, description: str) -> dict:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


def _ndjson(model: type[BaseModel], description: str) -> dict:
    return {"application/x-ndjson": {"schema": {"$ref": _REF.format(model=model.__name__)}, "x-description": description}}


NOT_FOUND = _error("No such module, job or artifact", {"error": "module_not_found", "message": "no module named 'hello'"})
UNAUTHORIZED = _error("An API key is configured and this request did not carry a valid one",
                      {"error": "unauthorized", "message": "this endpoint needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"})

# (method, path) -> what FastAPI cannot infer: tag, request body, answers, examples.
CONTROL_PLANE: dict[tuple[str, str], dict] = {
    ("post", "/mgnt"): {
        "tags": ["deploy"],
        "summary": "Deploy a C module",
        "description": "Compile the uploaded source against the SDK (or take it from the action cache), load it in a "
        "fresh worker, validate its routes, sockets and jobs, run `onload`, then swap it in atomically. "
        "Requests in flight finish on the old version. With `check=1` only compile.\n\n"
        "`curl -F code=@hello.c http://127.0.0.1:8080/mgnt`",
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": {"$ref": _REF.format(model="DeployUpload")},
                                                "encoding": {"code": {"contentType": "text/x-c, application/octet-stream"}}}},
        },
        "responses": {
            "200": {"description": "Active now (or, with check=1, compiles)",
                    **_json((s.DeployResult, s.CheckResult), {**_MODULE, "cache_hit": False, "build_ms": 323.5, "warnings": [],
                                                              "noop": False, "previous_hash": None,
                                                              "phases": {"load_ms": 41.2, "start_ms": 3.1, "swap_ms": 0.4}, "deploy_ms": 439.6})},
            "400": _error("Not a multipart upload, or no field `code`", {"error": "missing_code", "message": "multipart field 'code' is missing"}),
            "401": UNAUTHORIZED,
            "409": _error("A route or socket is already served by another module",
                          {"error": "route_conflict", "message": "GET /hello is already served by module 'other'"}),
            "413": _error("The source is larger than the limit"),
            "422": {"description": "Compile error (with diagnostics), or a module the runtime rejects",
                    "content": {"application/json": {"schema": {"oneOf": [{"$ref": _REF.format(model="Error")},
                                                                          {"$ref": _REF.format(model="HTTPValidationError")}]},
                                                     "example": _COMPILE_ERROR}}},
            "429": _error("Too many builds at once; retry"),
            "503": _error("Builds are refused (no sandbox) or the runtime is unavailable"),
        },
    },
    ("get", "/sdk/cweb.h"): {"tags": ["deploy"], "summary": "The SDK header",
                             "responses": {"200": _text("text/x-c", "cweb.h, as modules are compiled against it")}},
    ("get", "/sdk.tar.gz"): {"tags": ["deploy"], "summary": "Every SDK header, for local compiles and IDEs",
                             "description": "`./cweb sdk -o cweb-sdk && gcc -fsyntax-only -I cweb-sdk module.c`",
                             "responses": {"200": {"description": "A gzip tarball of the headers",
                                                   "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}}},
    ("get", "/modules"): {"tags": ["modules"], "summary": "Active modules",
                          "responses": {"200": {"description": "Oldest deploy first", **_json(s.ModuleList, {"modules": [{**_MODULE, "connections": 0}]})}}},
    ("get", "/modules/{name}"): {"tags": ["modules"], "summary": "One active module",
                                 "responses": {"200": {"description": "The module", **_json(s.ModuleInfo, {**_MODULE, "connections": 0})},
                                               "404": NOT_FOUND}},
    ("delete", "/modules/{name}"): {"tags": ["modules"], "summary": "Remove a module",
                                    "description": "Its routes and sockets go away now; requests in flight finish, then `unload` runs.",
                                    "responses": {"200": {"description": "Removed", **_json(s.Removed, {"name": "hello", "removed": True})},
                                                  "401": UNAUTHORIZED, "404": NOT_FOUND}},
    ("get", "/modules/{name}/versions"): {
        "tags": ["modules"], "summary": "Every artifact deployed under a name",
        "responses": {"200": {"description": "Most recent first", **_json(s.VersionList, {"name": "hello", "versions": [
            {"module_hash": s.HASH, "source_sha256": s.SOURCE_HASH, "deployed_at": 1767225600.0, "last_deployed_at": 1767225600.0, "active": True}]})},
            "404": NOT_FOUND}},
    ("post", "/modules/{name}/rollback"): {
        "tags": ["modules"], "summary": "Activate an earlier artifact (no compile)",
        "requestBody": {"required": True, **_json(s.RollbackRequest, {"module_hash": s.HASH})},
        "responses": {"200": {"description": "Active now", **_json(s.RollbackResult, {**_MODULE, "action": "rollback", "cache_hit": True,
                                                                                      "noop": False, "previous_hash": None, "deploy_ms": 12.5})},
                      "401": UNAUTHORIZED, "404": NOT_FOUND,
                      "422": _error("The body is not {\"module_hash\": ...}", {"error": "invalid_body", "message": "send a JSON object {\"module_hash\": \"<64 hex digits>\"}"})}},
    ("get", "/modules/{name}/logs"): {
        "tags": ["modules"], "summary": "What the module printed",
        "description": "stdout and stderr of every version's worker, from a bounded ring, with timestamps. "
        "With `follow=1` the answer is a stream of JSON lines (`application/x-ndjson`): the tail, then each new line.\n\n"
        "`curl -N 'http://127.0.0.1:8080/modules/hello/logs?follow=1'`",
        "responses": {"200": {"description": "The last `tail` lines, oldest first",
                              "content": {**_json(s.LogTail, {"name": "hello", "lines": [
                                  {"ts": 1767225600.1, "stream": "stdout", "module_hash": s.HASH, "line": "hello from the module"}]})["content"],
                                  **_ndjson(s.LogLine, "follow=1: one LogLine per line")}},
                      "404": NOT_FOUND}},
    ("get", "/artifacts/{module_hash}"): {"tags": ["artifacts"], "summary": "An artifact's manifest and provenance",
                                         "responses": {"200": {"description": "Source, build inputs, deploys and jobs", **_json(s.Artifact)},
                                                       "404": NOT_FOUND}},
    ("get", "/artifacts/{module_hash}/source"): {"tags": ["artifacts"], "summary": "The source an artifact was built from",
                                                "responses": {"200": _text("text/x-c", "The uploaded C source"), "401": UNAUTHORIZED,
                                                              "404": NOT_FOUND}},
    ("post", "/jobs"): {
        "tags": ["jobs"], "summary": "Start a job",
        "description": "The job is pinned to the module's active artifact: a later deploy does not change what runs it.",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 200},
                        "description": "A retry with the same key returns the same job"}],
        "requestBody": {"required": True, **_json(s.JobSubmit, {"module": "job_sum", "job": "sum", "payload": {"n": 100}})},
        "responses": {"200": {"description": "Queued", **_json(s.JobCreated, {"job_uuid": s.JOB_UUID, "state": "pending", "module_hash": s.HASH,
                                                                              "created": True})},
                      "400": _error("The body is not JSON"), "401": UNAUTHORIZED, "404": NOT_FOUND,
                      "409": _error("No module given and several modules declare the job",
                                    {"error": "ambiguous_job", "message": "several modules have a job 'sum': a, b; name one in 'module'",
                                     "modules": ["a", "b"]}),
                      "422": _error("Missing or invalid fields", {"error": "invalid_job", "message": "field 'job' is a required string, 'module' an optional one"}),
                      "507": _error("The disk is full", {"error": "insufficient_storage", "message": "no space left to store the job"})}},
    ("get", "/jobs"): {"tags": ["jobs"], "summary": "List jobs",
                       "responses": {"200": {"description": "Newest first", **_json(s.JobList, {"jobs": [_JOB], "next_cursor": None})}}},
    ("get", "/jobs/{job_uuid}"): {
        "tags": ["jobs"], "summary": "A job's state, result or error",
        "responses": {"200": {"description": "The job", **_json(s.Job, {**_JOB, "result": {"n": 100, "sum": 5050}, "error": None, "max_attempts": 1,
                                                                          "priority": 0, "run_after": 1767225600, "timeout_s": 600.0})},
                      "404": NOT_FOUND}},
    ("post", "/jobs/{job_uuid}/cancel"): {
        "tags": ["jobs"], "summary": "Cancel a pending or running job",
        "responses": {"200": {"description": "Canceled (or already ending)", **_json(s.JobCancel, {"job_uuid": s.JOB_UUID, "state": "canceled"})},
                      "401": UNAUTHORIZED, "404": NOT_FOUND,
                      "409": _error("The job already finished", {"error": "job_finished", "message": f"job {s.JOB_UUID} is already done"})}},
    ("get", "/jobs/{job_uuid}/events"): {
        "tags": ["jobs"], "summary": "A job's events",
        "description": "Stored events after `since_event_id`, a page of at most `limit` (1..1000) events and about 1 MiB; "
                       "with `follow=1` a stream of JSON lines until the terminal event.",
        "responses": {"200": {"description": "The events",
                              "content": {**_json(s.JobEventList, {"events": [
                                  {"job_uuid": s.JOB_UUID, "event_id": 1, "ts": 1767225600, "ts_ms": 1767225600123, "type": "created", "data": {}}],
                                  "next_since_event_id": None})["content"],
                                  **_ndjson(s.JobEvent, "follow=1: one JobEvent per line")}},
                      "404": NOT_FOUND}},
    ("get", "/healthz"): {"tags": ["observability"], "summary": "Liveness",
                          "responses": {"200": {"description": "Up", **_json(s.Health, {"status": "ok", "modules": 1, "builds": "bubblewrap", "workers": "bubblewrap"})}}},
    ("get", "/metrics"): {"tags": ["observability"], "summary": "Prometheus metrics",
                          "responses": {"200": _text("text/plain", "Prometheus text exposition format 0.0.4")}},
    ("get", "/_cweb/builds"): {"tags": ["observability"], "summary": "Recent builds",
                               "responses": {"200": {"description": "Newest first", **_json(s.BuildList)}}},
    ("get", "/_cweb/workers"): {"tags": ["observability"], "summary": "Worker processes",
                                "responses": {"200": {"description": "As the runtime agent sees them", **_json(s.WorkerList)}}},
    ("get", "/_cweb/nodes"): {"tags": ["observability"], "summary": "Nodes of the cluster",
                              "responses": {"200": {"description": "Every node (this server alone without a cluster)",
                                                    **_json(s.NodeList)}}},
}

_MODELS: tuple[type[BaseModel], ...] = (
    s.Error, s.Diagnostic, s.DeployUpload, s.DeployResult, s.CheckResult, s.RollbackRequest, s.RollbackResult,
    s.ModuleInfo, s.ModuleList, s.Removed, s.VersionList, s.Artifact, s.LogLine, s.LogTail, s.Health,
    s.JobSubmit, s.JobCreated, s.JobList, s.Job, s.JobCancel, s.JobEvent, s.JobEventList, s.BuildList, s.WorkerList,
    s.NodeOutcome, s.Node, s.NodeList,
)


@functools.cache
def component_schemas() -> dict[str, Any]:
    """JSON Schemas of every model, keyed by name, with refs into components."""
    inputs = {s.JobSubmit, s.RollbackRequest, s.DeployUpload}
    _, top = models_json_schema([(m, "validation" if m in inputs else "serialization") for m in _MODELS], ref_template=_REF)
    return top["$defs"]


def document(base: dict) -> dict:
    """FastAPI's generated document with the control plane's shapes merged in."""
    doc = copy.deepcopy(base)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in component_schemas().items():
        schemas.setdefault(name, schema)
    known = {t["name"] for t in doc.setdefault("tags", [])}
    doc["tags"].extend(t for t in TAGS if t["name"] not in known)
    for (method, path), extra in CONTROL_PLANE.items():
        op = doc.get("paths", {}).get(path, {}).get(method)
        if op is None:
            continue  # documented here, not (or no longer) served
        for key in ("tags", "summary", "description", "requestBody"):
            if key in extra:
                op[key] = extra[key]
        if "parameters" in extra:
            have = {(p["name"], p["in"]) for p in op.get("parameters", [])}
            op.setdefault("parameters", []).extend(p for p in extra["parameters"] if (p["name"], p["in"]) not in have)
        responses = op.setdefault("responses", {})
        responses.update(extra["responses"])
    # FastAPI documents its own 422 for parameter validation; this server
    # answers those 400 invalid_parameter (api/app.py).
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            responses = op.get("responses") if isinstance(op, dict) else None
            if not responses or "422" not in responses:
                continue
            schema = responses["422"].get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]
                responses.setdefault("400", _error("A query or path parameter is out of range or of the wrong type",
                                                   {"error": "invalid_parameter", "message": "query.tail: Input should be less than or equal to 10000"}))
    doc["x-cweb-control-plane"] = True
    return doc


def module_tag(name: str) -> str:
    return f"module: {name}"


def with_module_routes(base: dict, versions: Iterable[Any]) -> dict:
    """A copy of base with the live modules: one tag per module (its routes,
    then its sockets and jobs with their payloads in the tag's text), regex
    routes as path templates "Try it out" can call (api/route_examples.py),
    and each job's payload as an example of POST /jobs.

    base may be FastAPI's raw document or one that went through document();
    either way the result has the control plane's schemas."""
    doc = document(base) if not base.get("x-cweb-control-plane") else copy.deepcopy(base)
    paths = doc.setdefault("paths", {})
    module_tags = []
    job_examples: dict[str, dict] = {}
    for v in sorted(versions, key=lambda v: v.name):
        docs = v.decl.get("docs") or {}
        tag = module_tag(v.name)
        for r in v.decl["routes"]:
            key, op = _route_operation(v, r, docs.get(f"{r['method']} {r['path']}") or {}, tag)
            if r["method"].lower() in paths.get(key, {}):
                key = r["path"]  # two regexes with one template: the second keeps its regex
            paths.setdefault(key, {})[r["method"].lower()] = op
        for j in v.decl["jobs"]:
            payload = _json_or_none((docs.get(f"JOB {j['name']}") or {}).get("example"))
            job_examples[f"{v.name}/{j['name']}"] = {
                "summary": (docs.get(f"JOB {j['name']}") or {}).get("summary") or f"job {j['name']} of module {v.name}",
                "value": {"module": v.name, "job": j["name"], "payload": payload if payload is not None else {}},
            }
        module_tags.append({"name": tag, "description": _module_text(v, docs),
                            "x-cweb-module": {"name": v.name, "module_hash": v.module_hash},
                            "x-cweb-websockets": [{"path": w["path"], **(docs.get(f"WS {w['path']}") or {})} for w in v.decl["websockets"]],
                            "x-cweb-jobs": [{"name": j["name"], **(docs.get(f"JOB {j['name']}") or {})} for j in v.decl["jobs"]]})
    # Modules first: they are what a user opens /docs for.
    doc["tags"] = module_tags + [t for t in doc.get("tags", []) if t["name"] != LIVE_TAG]
    submit = paths.get("/jobs", {}).get("post")
    if submit is not None and job_examples:
        media = submit.get("requestBody", {}).get("content", {}).get("application/json")
        if media is not None:
            default = media.pop("example", None)
            media["examples"] = {**job_examples, **({"example": {"summary": "the shape", "value": default}} if default else {})}
    return doc


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _route_operation(v: Any, r: dict, doc: dict, tag: str) -> tuple[str, dict]:
    """The OpenAPI path key and operation of one module route."""
    path, method = r["path"], r["method"]
    declared = [p for p in doc.get("params", []) if p["in"] == "path"]
    params: list[dict] = []
    key = path
    how = "matched exactly"
    if _is_regex(path):
        how = f"a POSIX extended regular expression, matched in full: `{path}`"
        t = route_examples.template(path, [p["name"] for p in declared], doc.get("example"))
        if t is not None:
            key = t.path
            how += f" (for example `{t.example}`)"
            described = {p["name"]: p["description"] for p in declared}
            for p in t.params:
                params.append({"name": p.name, "in": "path", "required": True, "example": p.example,
                               "schema": {"type": "string", "example": p.example},
                               "description": described.get(p.name) or f"matches `{p.ere}`" + (" (a capture group)" if p.group else "")})
        else:
            how += " (no example path could be found: edit the path before sending)"
    for p in doc.get("params", []):
        if p["in"] != "path":
            params.append({"name": p["name"], "in": p["in"], "required": p["required"], "description": p["description"],
                           "schema": {"type": "string"}})
    description = (doc.get("description", "") + "\n\n" if doc.get("description") else "") + (
        f"Served by module `{v.name}` (author {v.decl.get('author') or 'unknown'}), artifact `{v.module_hash}`. The path is {how}.")
    op = {
        "tags": [tag],
        "summary": doc.get("summary") or f"{method} {path} — module {v.name}",
        "description": description,
        "operationId": f"module_{v.name}_{r['index']}",
        "responses": {"200": {"description": "What the module answers."}, "502": {"description": "The module crashed."},
                      "503": {"description": "The module is restarting or quarantined."},
                      "504": {"description": "The module did not answer in time."}},
        "x-cweb-module": {"name": v.name, "module_hash": v.module_hash},
    }
    if key != path:
        op["x-cweb-route"] = path
    if params:
        op["parameters"] = params
    if method in ("POST", "PUT", "PATCH"):
        op["requestBody"] = {"content": {"application/octet-stream": {}, "application/x-www-form-urlencoded": {}, "multipart/form-data": {}}}
    return key, op


def _module_text(v: Any, docs: dict) -> str:
    """The tag's Markdown: who serves it, then its sockets and jobs with their payloads."""
    lines = [f"Module `{v.name}` by {v.decl.get('author') or 'unknown'}, artifact `{v.module_hash[:12]}`."]
    if v.decl["websockets"]:
        lines.append("\n**WebSockets** (not callable from this page: `websocat ws://HOST/PATH`)\n")
        for w in v.decl["websockets"]:
            d = docs.get(f"WS {w['path']}") or {}
            line = f"- `WS {w['path']}`" + (f" — {d['summary']}" if d.get("summary") else "")
            if d.get("example"):
                line += f"; a message: `{d['example']}`"
            lines.append(line)
    if v.decl["jobs"]:
        lines.append("\n**Jobs** (start one with `POST /jobs`; its examples list these)\n")
        for j in v.decl["jobs"]:
            d = docs.get(f"JOB {j['name']}") or {}
            payload = d.get("example") or "{}"
            line = f"- `{j['name']}`" + (f" — {d['summary']}" if d.get("summary") else "")
            line += f"; payload `{payload}`: `curl -d '{{\"module\": \"{v.name}\", \"job\": \"{j['name']}\", \"payload\": {payload}}}' HOST/jobs`"
            lines.append(line)
    return "\n".join(lines)


def _is_regex(path: str) -> bool:
    return bool(set(path) & set(".^$*+?()[]{}|\\"))
