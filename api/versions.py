"""Module versions, rollback and artifact provenance (control plane).

    GET  /modules/{name}/versions        every artifact ever deployed under name
    POST /modules/{name}/rollback        {"module_hash": ...}: activate an earlier
                                         artifact from the store, no compile
    GET  /artifacts/{module_hash}        manifest + provenance (source, build key,
                                         compiler, build time, deploys)
    GET  /artifacts/{module_hash}/source the uploaded source text (needs a key
                                         when keys are configured: api/auth.py)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.errors import Invalid, NotFound
from builder.store import is_hash
from runtime import provenance

router = APIRouter()

# Most recent job runs listed in an artifact's provenance.
JOB_RUNS_SHOWN = 100


def _state(request: Request) -> Any:
    return request.app.state.cweb


def _check_hash(module_hash: str) -> str:
    if not is_hash(module_hash):
        raise NotFound(f"{module_hash!r} is not a module hash (64 lower-case hex digits)", code="artifact_not_found")
    return module_hash


def _chain(state: Any, module_hash: str, manifest: dict) -> dict:
    """The artifact's provenance as the runtime will judge it: the signed
    statement, and whether it verifies under a trusted builder key."""
    prov = manifest.get("provenance")
    if not isinstance(prov, dict):
        return {"signed": False, "verified": False, "error": "artifact_unsigned"}
    shown = {k: prov.get(k) for k in (*provenance.SIGNED_FIELDS, "algorithm", "public_key", "signature")}
    store = getattr(state.builder, "store", None)
    if store is None and not state.settings.runtime.trusted_builder_keys:
        return {"signed": True, "verified": None, "error": None, "statement": shown,
                "note": "the api cannot see the store's builder keys; the runtime checks them before loading"}
    if not hasattr(state, "trusted_keys"):
        state.trusted_keys = provenance.TrustedKeys(store.root if store is not None else "", state.settings.runtime.trusted_builder_keys)
    try:
        provenance.verify(manifest, module_hash, state.trusted_keys)
    except provenance.ProvenanceError as exc:
        return {"signed": True, "verified": False, "error": exc.code, "message": exc.message, "statement": shown}
    return {"signed": True, "verified": True, "error": None, "statement": shown}


async def _versions(state: Any, name: str) -> list[dict]:
    active = state.host.active.get(name)
    active_hash = active.module_hash if active is not None else None
    return [
        {
            "module_hash": v["module_hash"],
            "source_sha256": v["source_sha256"],
            "deployed_at": v["deployed_at"],
            "last_deployed_at": v["last_deployed_at"],
            "active": v["module_hash"] == active_hash,
        }
        for v in await state.registry.versions(name)
    ]


@router.get("/modules/{name}/versions")
async def module_versions(name: str, request: Request) -> dict:
    """Every artifact deployed under name, most recently deployed first."""
    versions = await _versions(_state(request), name)
    if not versions:
        raise NotFound(f"no module named {name!r} was ever deployed", code="module_not_found")
    return {"name": name, "versions": versions}


async def _rollback_target(request: Request) -> str:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"the body is not JSON: {exc}", code="invalid_body") from exc
    if not isinstance(body, dict) or not isinstance(body.get("module_hash"), str):
        raise Invalid('send a JSON object {"module_hash": "<64 hex digits>"}', code="invalid_body")
    module_hash = body["module_hash"].strip().lower()
    if not is_hash(module_hash):
        raise Invalid(f"{body['module_hash']!r} is not a module hash (64 hex digits)", code="invalid_body")
    return module_hash


@router.post("/modules/{name}/rollback")
async def rollback(name: str, request: Request) -> dict:
    """Make an earlier artifact of name the active one: same hot swap as a
    deploy (old requests finish on the old version), no compile."""
    started = time.perf_counter()
    module_hash = await _rollback_target(request)
    return await _state(request).deploys.rollback(name, module_hash, started=started)


@router.get("/artifacts/{module_hash}")
async def artifact(module_hash: str, request: Request) -> dict:
    """The artifact's manifest and where it came from and went."""
    state = _state(request)
    _check_hash(module_hash)
    record = await state.registry.artifact(module_hash)
    manifest = await state.builder.manifest(module_hash)
    if record is None and manifest is None:
        raise NotFound(f"no artifact {module_hash[:12]}", code="artifact_not_found")
    manifest = manifest or {}
    record = record or {}
    decl = record.get("decl") or {}
    out: dict[str, Any] = {
        "module_hash": module_hash,
        "name": record.get("name") or decl.get("name"),
        "author": record.get("author", ""),
        "source_sha256": manifest.get("source_sha256") or record.get("source_sha256"),
        "source_name": manifest.get("source_name"),
        "build_key": manifest.get("build_key") or record.get("build_key"),
        "compiler": manifest.get("compiler"),
        "flags": manifest.get("flags"),
        "sdk_digest": manifest.get("sdk_digest"),
        "abi_version": manifest.get("abi_version"),
        "built_at": manifest.get("built_at"),
        "size": manifest.get("size"),
        "routes": [{"method": r["method"], "path": r["path"]} for r in decl.get("routes", [])],
        "websockets": [{"path": w["path"]} for w in decl.get("websockets", [])],
        "jobs": [{"name": j["name"]} for j in decl.get("jobs", [])],
        "first_deployed_at": record.get("first_seen"),
        "deploys": await state.registry.deploys_of(module_hash),
        "provenance": await asyncio.to_thread(_chain, state, module_hash, manifest) if manifest else None,
        "manifest": manifest,
    }
    out["job_runs"] = await state.job_store.runs_of(module_hash, JOB_RUNS_SHOWN)
    return out


@router.get("/artifacts/{module_hash}/source")
async def artifact_source(module_hash: str, request: Request) -> Response:
    """The C source the artifact was built from."""
    state = _state(request)
    _check_hash(module_hash)
    record = await state.registry.artifact(module_hash) or {}
    source_sha = record.get("source_sha256") or (await state.builder.manifest(module_hash) or {}).get("source_sha256")
    data = await state.builder.source(source_sha) if source_sha else None
    if data is None:
        raise NotFound(f"no source kept for artifact {module_hash[:12]}", code="source_not_found")
    return Response(data, media_type="text/x-c; charset=utf-8",
                    headers={"content-disposition": f'inline; filename="{source_sha[:12]}.c"'})
