"""create_app(): the control plane (FastAPI) behind the module fast path."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import auth, builds, cache_admin, observe, secrets, versions
from api.artifacts import Artifacts, object_store
from api.builder_discovery import FarmSetup, make_farm
from api.builds_pg import PgBuilds
from api.cluster import routes as cluster_routes
from api.cluster.cluster import Cluster
from api.cors import Cors
from api.deploys import Deployer
from api.dispatch import Dispatcher
from api.errors import ApiError, BadRequest, PayloadTooLarge, error_body
from api.jobs import routes as job_routes
from api.jobs.backend import JobStore
from api.jobs.pg_store import PgJobStore
from api.jobs.service import JobLimits, JobService
from api.jobs.store import Store as SQLiteJobStore
from api.metrics import Metrics
from api.modules.host import ModuleHost
from api.openapi import API_DESCRIPTION, document, with_module_routes
from api.pg import Database, is_postgres
from api.registry import Registry, RegistryStore
from api.registry_pg import PgRegistry
from api.settings import Settings
from builder import compile as compile_mod
from builder.errors import BuildError
from builder.farm import BuildFarm
from builder.interface import Builder
from builder.local import sdk_tarball
from builder.objects import ObjectStore
from builder.store import Store
from runtime.client import AgentClient

log = logging.getLogger("cweb.api")


def _error_response(exc: Exception) -> Response:
    status, body = error_body(exc)
    return Response(body, status_code=status, media_type="application/json")


class State:
    """Everything the control plane needs, built in the lifespan."""

    settings: Settings
    host: ModuleHost
    builder: Builder
    farm: BuildFarm
    farms: FarmSetup
    registry: RegistryStore
    cluster: Cluster | None
    agent: AgentClient
    metrics: Metrics
    logs: observe.LogHub
    secrets: secrets.SecretStore
    builds: observe.BuildHistory
    changes: observe.Changes
    deploys: Deployer
    jobs: JobService
    job_store: JobStore
    db: Database | None
    build_rows: PgBuilds | None
    objects: ObjectStore | None
    artifacts: Artifacts
    started_at: float


# Room for the multipart boundaries and part headers around the source.
UPLOAD_FRAMING = 64 * 1024


async def _read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise BadRequest(
            "upload the C file as multipart/form-data with a field named 'code' (curl -F code=@module.c)",
            code="not_multipart",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + UPLOAD_FRAMING:
        raise PayloadTooLarge(f"upload is {declared} bytes; the source limit is {max_bytes}", code="source_too_large")
    try:
        form = await request.form(max_files=4, max_fields=16)
    except Exception as exc:  # noqa: BLE001 - any parser failure is the client's malformed body
        raise BadRequest(f"malformed multipart body: {exc}", code="malformed_upload") from exc
    field = form.get("code")
    if field is None:
        raise BadRequest("multipart field 'code' is missing", code="missing_code")
    if isinstance(field, UploadFile):
        data = await field.read(max_bytes + 1)
        name = field.filename or "module.c"
    else:
        data = field.encode()
        name = "module.c"
    await form.close()
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"source is larger than the limit of {max_bytes} bytes", code="source_too_large")
    return data, name


def _raise_fd_limit() -> None:
    """Every client socket and worker connection is a descriptor: use all we may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def create_app(settings: Settings) -> Dispatcher:
    settings = settings.resolved()
    _raise_fd_limit()
    state = State()
    state.settings = settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        os.makedirs(settings.data_dir, exist_ok=True)
        os.makedirs(settings.run_dir, exist_ok=True)
        # A fresh shared cache per server run, and the signing key, before any worker starts.
        cache_admin.prepare(settings.data_dir, settings.cache_bytes)
        state.started_at = time.time()
        if state.db is not None:
            await state.db.open()
        await state.registry.open()
        state.farms = await make_farm(settings.builder_url, settings.store_dir, unsafe_builds=settings.unsafe_builds,
                                      max_source_bytes=settings.max_source_bytes, slots=settings.build_slots,
                                      key_path=os.path.join(settings.data_dir, "builder-key", "ed25519.pem"),
                                      objects=state.objects)
        state.builder = state.farm = state.farms.farm
        state.farm.on_finish.append(state.metrics.observe_build)
        if state.build_rows is not None:
            await state.build_rows.open()
            state.farm.on_change.append(state.build_rows.record)
        state.metrics.farm = state.farm
        if not state.builder.sandboxed:
            if settings.unsafe_builds:
                log.warning("bubblewrap is unavailable: compiling WITHOUT a sandbox (CWEB_UNSAFE_BUILDS=1)")
            else:
                log.error("bubblewrap is unavailable: uploads will be refused (set CWEB_UNSAFE_BUILDS=1 to allow unsandboxed builds)")
        state.deploys = Deployer(state.farm, state.host, state.registry, state.metrics, state.builds, cluster=state.cluster)
        if not settings.runtime_socket:
            # Embedded: the agent inherits its end of a socketpair; no path.
            await state.agent.spawn_embedded(settings.agent_settings())
        await state.agent.connect()
        await state.agent.describe()
        if state.cluster is not None:
            # Every active module loaded (or forwarded) before /healthz answers.
            await state.cluster.start()
        else:
            await state.host.restore()
        await state.job_store.open()
        await state.jobs.start(state.host)
        job_metrics = asyncio.create_task(state.metrics.follow_jobs(state.jobs))
        feeds = [asyncio.create_task(state.changes.follow_jobs(state.jobs)), asyncio.create_task(state.changes.tick_stats(state.metrics))]
        try:
            await state.builder.glue_object()
        except BuildError as exc:
            log.error("SDK glue does not compile: %s", exc.message)
        # Everything built so far lives as long as the server: out of the
        # collector's sight, a full collection no longer walks it (tail latency).
        gc.collect()
        gc.freeze()
        # "ready" comes once the port is bound (api/__main__.py).
        log.info("cweb started: %d module(s), data dir %s, builds: %s", len(state.host.active), settings.data_dir, state.builder.mode)
        yield
        # What start-up left frozen is collected while the loop still runs: a
        # subprocess transport finalized after the loop closed would print an
        # "Event loop is closed" traceback on the way out (a Ctrl-C during start).
        gc.unfreeze()
        gc.collect()
        job_metrics.cancel()
        for task in feeds:
            task.cancel()
        state.host.sockets.close_all()
        if state.cluster is not None:
            await state.cluster.stop()
        await state.jobs.stop()
        await state.job_store.close()
        await state.agent.close()
        await state.registry.close()
        await state.farms.aclose()
        if state.build_rows is not None:
            await state.build_rows.close()
        if state.objects is not None:
            state.objects.close()
        if state.db is not None:
            await state.db.close()

    # Every collaborator is built here and handed to its users; the lifespan
    # only opens, starts and stops them.
    state.metrics = Metrics()
    state.logs = observe.LogHub()
    state.logs.metrics = state.metrics
    state.secrets = secrets.SecretStore(settings.data_dir)
    state.changes = observe.Changes()
    state.builds = observe.BuildHistory(on_record=state.changes.publish)
    # PostgreSQL shared by every node when configured (docs/CLUSTER.md), else SQLite files.
    state.db = Database(settings.database_url) if is_postgres(settings.database_url) else None
    state.registry = PgRegistry(state.db) if state.db is not None else Registry(os.path.join(settings.data_dir, "registry.db"))
    # Builds of every node in one table (api/builds_pg.py); without a database only this node's, in memory.
    state.build_rows = PgBuilds(state.db, settings.node_id) if state.db is not None else None
    if state.db is not None:
        state.job_store = PgJobStore(state.db, data_dir=settings.data_dir, instance=uuid.uuid4().hex[:12],
                                     node_id=settings.node_id, lease_s=settings.job_lease_s)
    else:
        state.job_store = SQLiteJobStore(os.path.join(settings.data_dir, "jobs.db"))
    state.jobs = JobService(state.job_store, limits=JobLimits.from_settings(settings))

    async def on_agent_event(event: dict) -> None:
        if event.get("event") == "log":
            state.logs.publish(event)
        else:
            await state.host.supervisor.on_agent_event(event)

    async def on_agent_back() -> None:
        await state.host.supervisor.reload_all()

    # The agent's events reach the host that uses the agent: these two
    # callbacks are the only way back from it.
    state.agent = AgentClient(settings.runtime_socket, on_agent_event,
                              settings.runtime.secret if settings.runtime_socket else "", on_reconnect=on_agent_back)
    state.host = ModuleHost(settings, state.agent, state.registry, jobs=state.jobs, metrics=state.metrics,
                            on_activate=state.logs.activated, on_change=state.changes.publish)
    state.host.spawner.secrets = state.secrets
    # Artifacts in an S3-compatible object store when configured (docs/CLUSTER.md):
    # fetched into this node's store before the agent loads them.
    state.objects = object_store(settings)
    state.artifacts = Artifacts(Store(settings.store_dir, state.objects) if state.objects is not None else None)
    state.host.spawner.artifacts = state.artifacts
    state.cluster = Cluster(settings, state.db, state.registry, state.host) if isinstance(state.registry, PgRegistry) else None
    # Swagger UI and ReDoc assets come from the fastapi-offline package, served
    # under /docs/static: the docs work with no route to a CDN.
    app = FastAPIOffline(
        title="cweb",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,  # api/observe.py serves /redoc with a Content-Security-Policy
        static_url="/docs/static",
    )
    # Routers defined in other modules reach the shared state through request.app.state.cweb.
    app.state.cweb = state
    app.include_router(versions.router)
    app.include_router(secrets.router)
    app.include_router(job_routes.router)
    app.include_router(observe.router)
    app.include_router(builds.router)
    app.include_router(cluster_routes.router)

    def openapi() -> dict:
        # The control plane's schema is built once; module routes are added on
        # every call so the document follows deploys and removals.
        if app.openapi_schema is None:
            app.openapi_schema = document(get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes))
        return with_module_routes(app.openapi_schema, state.host.active.values() if hasattr(state, "host") else ())

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _error_response(exc)

    @app.exception_handler(BuildError)
    async def _build_error(request: Request, exc: BuildError) -> Response:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        error = ApiError(str(exc.detail), code=code)
        error.status = exc.status_code
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid_parameter(request: Request, exc: RequestValidationError) -> Response:
        # A query or path parameter out of its range or of the wrong type: a
        # 400 in the house's shape, naming the parameter (never a 500, never
        # FastAPI's own {"detail": [...]}).
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error_response(BadRequest("; ".join(problems)[:500], code="invalid_parameter"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(exc)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "modules": len(state.host.active), "builds": state.builder.mode,
                "workers": state.agent.sandbox}

    @app.post("/mgnt")
    async def deploy(request: Request, check: int = Query(0, ge=0, le=1),
                     verify: str | None = Query(None, pattern="^reproducible$"),
                     build_id: str | None = Query(None, pattern="^[0-9a-f]{16}$"),
                     placement: str | None = Query(None, pattern="^(all|one)$")) -> dict:
        """Build, validate and activate an uploaded C module (field `code`).

        verify=reproducible builds the source a second time, without the
        cache, on another builder when there is one, and refuses the deploy
        (409 not_reproducible) when the two artifacts differ. build_id (16 hex
        digits, chosen by the client) names the build, so the client can follow
        GET /builds/{build_id}/log while it waits; a joined or reused id is ignored.
        placement (several nodes, docs/CLUSTER.md): `all` serves the module on
        every node (the default), `one` on the node that received the deploy
        only, the others forwarding its routes and sockets there; omitted, a
        redeploy keeps the module's placement."""
        started = time.perf_counter()
        source, filename = await _read_upload(request, settings.max_source_bytes)
        return await state.deploys.upload(source, filename, check=bool(check), started=started,
                                          client=builds.client_of(request), build_id=build_id,
                                          reproducible=verify == "reproducible", placement=placement)

    def live_summary(v: Any) -> dict:
        summary = v.summary()
        summary["connections"] = state.host.sockets.count(v.name)
        return summary

    @app.get("/modules")
    async def modules() -> dict:
        served = [*state.host.active.values(), *state.host.remote.values()]
        return {"modules": [live_summary(v) for v in sorted(served, key=lambda v: v.deployed_at)]}

    @app.get("/modules/{name}")
    async def module(name: str) -> dict:
        remote = state.host.remote.get(name)
        return live_summary(remote if remote is not None else state.host.get(name))

    @app.delete("/modules/{name}")
    async def remove_module(name: str) -> dict:
        if state.cluster is not None:
            return {"name": name, "removed": True, "nodes": await state.cluster.remove(name)}
        await state.host.remove(name)
        return {"name": name, "removed": True}

    @app.get("/sdk/cweb.h")
    async def sdk_header() -> Response:
        with open(os.path.join(compile_mod.SDK_DIR, "cweb.h"), "rb") as f:
            return PlainTextResponse(f.read(), media_type="text/x-c")

    @app.get("/sdk.tar.gz")
    async def sdk_archive() -> Response:
        return Response(sdk_tarball(), media_type="application/gzip",
                        headers={"content-disposition": 'attachment; filename="cweb-sdk.tar.gz"'})

    cors = Cors.from_settings(settings)
    return Dispatcher(state.host, app, settings.max_body_bytes, settings.request_timeout, jobs=state.jobs,
                      guard=auth.make_guard(settings), cors=cors if cors.enabled else None, metrics=state.metrics,
                      max_form_fields=settings.max_form_fields, max_upload=settings.max_source_bytes + UPLOAD_FRAMING)
