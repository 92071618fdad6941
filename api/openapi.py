"""The OpenAPI document: the control plane plus the live module routes."""

from __future__ import annotations

import copy
from typing import Any, Iterable

API_DESCRIPTION = """cweb hosts C modules behind HTTP, WebSockets and jobs.

The control plane (`/mgnt`, `/modules`, `/jobs`, `/sdk`, `/metrics`, ...) is
documented below with its schemas. Routes of the modules deployed right now
are listed under the tag **modules (live)**; they change with every deploy.
"""

_METHODS = {"GET": "get", "POST": "post", "PUT": "put", "DELETE": "delete", "OPTIONS": "options", "PATCH": "patch", "HEAD": "head"}


def with_module_routes(base: dict, versions: Iterable[Any]) -> dict:
    """A copy of base with one operation per live module route."""
    doc = copy.deepcopy(base)
    paths = doc.setdefault("paths", {})
    tags = doc.setdefault("tags", [])
    if not any(t.get("name") == "modules (live)" for t in tags):
        tags.append({"name": "modules (live)", "description": "Routes served by the modules deployed now."})
    for v in versions:
        for r in v.decl["routes"]:
            op = {
                "tags": ["modules (live)"],
                "summary": f"{r['method']} {r['path']} — module {v.name}",
                "description": f"Served by module `{v.name}` (author {v.decl.get('author') or 'unknown'}), "
                f"artifact `{v.module_hash}`. The path is {'a regular expression matched in full' if _is_regex(r['path']) else 'matched exactly'}.",
                "operationId": f"module_{v.name}_{r['index']}",
                "responses": {"200": {"description": "What the module answers."}, "502": {"description": "The module crashed."},
                              "504": {"description": "The module did not answer in time."}},
            }
            if r["method"] in ("POST", "PUT", "PATCH"):
                op["requestBody"] = {"content": {"application/octet-stream": {}, "application/x-www-form-urlencoded": {}, "multipart/form-data": {}}}
            paths.setdefault(r["path"], {})[_METHODS[r["method"]]] = op
    return doc


def _is_regex(path: str) -> bool:
    return bool(set(path) & set(".^$*+?()[]{}|\\"))
