"""The builder as an HTTP service (`python -m builder`): LocalBuilder behind a
small Starlette app, used by the api through api/remote_builder.py.

    POST /build?check=1&cache=0      multipart field `code` -> BuildResult JSON
    POST /build?stream=1             the same as JSON lines: {"log": text}... then
                                     {"result": BuildResult} or {"error": body, "status": n}
    GET  /artifacts/{hash}            the .so bytes
    GET  /artifacts/{hash}/manifest   its manifest (build provenance)
    GET  /sdk/cweb.h, GET /sdk.tar.gz the SDK, as the api serves it
    GET  /healthz                     {"status": "ok", "builder_id", "slots", "running", "toolchain", ...}

Errors are the api's JSON bodies: {"error": code, "message": ..., **extra}
with the status of the builder.errors class (422 + diagnostics and log for a
compile error), so the api can rebuild the same exception and answer exactly
as it does with the embedded builder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from builder import compile as compile_mod
from builder import limits
from builder.errors import ArtifactMissing, BuildError, SourceTooLarge
from builder.local import BuildResult, LocalBuilder, sdk_tarball
from builder.objects import ObjectStore, S3Settings
from builder.store import is_hash
from runtime import provenance
from runtime.env import env_int

log = logging.getLogger("cweb.builder")

# Multipart framing allowed on top of the source limit before 413.
UPLOAD_OVERHEAD_BYTES = 64 << 10


@dataclass
class BuilderSettings:
    """Settings of the builder service, read once by from_env()."""

    host: str = "127.0.0.1"
    port: int = 8081
    store_dir: str = "./data/store"
    unsafe_builds: bool = False
    max_source_bytes: int = limits.MAX_SOURCE_BYTES
    # Builds at once (0: one per core this process may use).
    slots: int = 0
    # How this builder names itself in the farm (default host:port; a container's host name is its id).
    builder_id: str = ""
    # CWEB_BUILDER_KEY: the builder's Ed25519 signing key (PEM, made when
    # missing); unset, a replica makes a key per life and registers it.
    key_path: str = ""
    # CWEB_S3_*: artifacts, manifests, sources, the action cache and builder
    # keys also go to this object store (builder/objects.py); empty: the local store only.
    s3: S3Settings = field(default_factory=S3Settings)

    @classmethod
    def from_env(cls, env: dict | None = None) -> BuilderSettings:
        env = dict(os.environ if env is None else env)
        return cls(
            host=env.get("CWEB_BUILDER_HOST", "127.0.0.1"),
            port=env_int(env, "CWEB_BUILDER_PORT", 8081),
            store_dir=env.get("CWEB_STORE_DIR", "./data/store"),
            unsafe_builds=env.get("CWEB_UNSAFE_BUILDS", "") == "1",
            max_source_bytes=env_int(env, "CWEB_MAX_SOURCE_BYTES", limits.MAX_SOURCE_BYTES),
            slots=env_int(env, "CWEB_BUILD_SLOTS", 0),
            builder_id=env.get("CWEB_BUILDER_ID", ""),
            key_path=env.get("CWEB_BUILDER_KEY", ""),
            s3=S3Settings.from_env(env),
        )


def result_body(result: BuildResult) -> dict:
    """The JSON form of a BuildResult (RemoteBuilder reads it back)."""
    return {**result.summary(), "manifest": result.manifest}


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, code: str, message: str, **extra: object) -> Response:
    return _json({"error": code, "message": message, **extra}, status)


def _build_error(exc: BuildError) -> Response:
    return _error(exc.status, exc.code, exc.message, **exc.extra)


def _stream_build(builder: LocalBuilder, source: bytes, filename: str, use_cache: bool) -> StreamingResponse:
    """The build as JSON lines: the compiler's output as it comes, then the
    result or the error. A stream that ends without either is a builder that
    died mid-build (the farm retries it elsewhere)."""
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def run() -> None:
        try:
            result = await builder.build(source, filename, use_cache=use_cache,
                                         on_log=lambda text: lines.put_nowait(orjson.dumps({"log": text}) + b"\n"))
            lines.put_nowait(orjson.dumps({"result": result_body(result)}) + b"\n")
        except BuildError as exc:
            body = {"error": exc.code, "message": exc.message, **exc.extra}
            lines.put_nowait(orjson.dumps({"error": body, "status": exc.status}) + b"\n")
        except Exception:
            log.exception("unhandled error in a streamed build")
            body = {"error": "internal_error", "message": "unexpected builder error"}
            lines.put_nowait(orjson.dumps({"error": body, "status": 500}) + b"\n")
        finally:
            lines.put_nowait(None)

    async def body() -> AsyncIterator[bytes]:
        task = asyncio.create_task(run())
        try:
            while (line := await lines.get()) is not None:
                yield line
        finally:
            # The caller hung up: stop compiling for nobody.
            task.cancel()

    return StreamingResponse(body(), media_type="application/x-ndjson")


class UploadRejected(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def _read_code(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The `code` field of a multipart upload, with its file name."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadRejected(400, "not_multipart", "upload the C file as multipart/form-data with a field named 'code'")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + UPLOAD_OVERHEAD_BYTES:
        raise UploadRejected(413, SourceTooLarge.code, f"upload is {declared} bytes; the source limit is {max_bytes}")
    try:
        form = await request.form(max_files=4, max_fields=16)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a malformed body
        raise UploadRejected(400, "malformed_upload", f"malformed multipart body: {exc}") from exc
    try:
        field = form.get("code")
        if field is None:
            raise UploadRejected(400, "missing_code", "multipart field 'code' is missing")
        if isinstance(field, UploadFile):
            # One byte over the limit is enough for LocalBuilder to say 413.
            return await field.read(max_bytes + 1), field.filename or "module.c"
        return field.encode(), "module.c"
    finally:
        await form.close()


def create_app(settings: BuilderSettings) -> Starlette:
    """The builder's ASGI app; the LocalBuilder is made in the lifespan."""
    box: dict[str, LocalBuilder] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        os.makedirs(settings.store_dir, exist_ok=True)
        objects = ObjectStore(settings.s3) if settings.s3.enabled else None
        builder = LocalBuilder(settings.store_dir, unsafe_builds=settings.unsafe_builds, max_source_bytes=settings.max_source_bytes,
                               slots=settings.slots, name=settings.builder_id or f"{socket.gethostname()}:{settings.port}",
                               key_path=settings.key_path or None, objects=objects)
        box["builder"] = builder
        if objects is not None:
            try:
                # The key first: nodes verify what this builder signs against it.
                await asyncio.to_thread(builder.store.publish_builder_key, builder.signer.key_id)
            except BuildError as exc:
                log.error("object store: %s (retried with the first build)", exc.message)
        if not builder.sandboxed:
            if settings.unsafe_builds:
                log.warning("compiling without bubblewrap (CWEB_UNSAFE_BUILDS=1): the container is the sandbox")
            else:
                log.error("bubblewrap is unavailable: builds will be refused (set CWEB_UNSAFE_BUILDS=1 to allow them)")
        try:
            await builder.glue_object()
        except BuildError as exc:
            log.error("SDK glue does not compile: %s", exc.message)
        log.info("cweb builder %s ready on %s:%d (store %s, mode %s, %d slots, signing key %s = %s)", builder.name, settings.host,
                 settings.port, settings.store_dir, builder.mode, builder.slots, builder.signer.key_id,
                 provenance.public_b64(builder.signer.public))
        if objects is not None:
            log.info("artifacts also go to the object store %s/%s", objects.endpoint, objects.bucket)
        try:
            yield
        finally:
            if objects is not None:
                objects.close()

    async def build(request: Request) -> Response:
        builder = box["builder"]
        use_cache = request.query_params.get("cache", "1") != "0"
        try:
            source, filename = await _read_code(request, settings.max_source_bytes)
            if request.query_params.get("stream") == "1":
                return _stream_build(builder, source, filename, use_cache)
            result = await builder.build(source, filename, use_cache=use_cache)
        except UploadRejected as exc:
            return _error(exc.status, exc.code, exc.message)
        except BuildError as exc:
            return _build_error(exc)
        body = result_body(result)
        if request.query_params.get("check") == "1":
            body["check"] = True
        return _json(body)

    async def _artifact_hash(request: Request) -> str | None:
        module_hash = request.path_params["module_hash"]
        store = box["builder"].store
        if not is_hash(module_hash):
            return None
        if store.objects is not None and not store.has_artifact(module_hash):
            try:
                await asyncio.to_thread(store.fetch_artifact, module_hash)
            except ArtifactMissing:
                return None
        return module_hash if store.has_artifact(module_hash) else None

    async def artifact(request: Request) -> Response:
        try:
            module_hash = await _artifact_hash(request)
        except BuildError as exc:
            return _build_error(exc)
        if module_hash is None:
            return _error(404, "artifact_not_found", "no artifact with that hash in the store")
        return FileResponse(
            box["builder"].store.artifact_path(module_hash),
            media_type="application/octet-stream",
            filename=f"{module_hash}.so",
        )

    async def manifest(request: Request) -> Response:
        try:
            module_hash = await _artifact_hash(request)
            body = await asyncio.to_thread(box["builder"].store.manifest, module_hash) if module_hash else None
        except BuildError as exc:
            return _build_error(exc)
        if body is None:
            return _error(404, "artifact_not_found", "no artifact with that hash in the store")
        return _json(body)

    async def sdk_header(request: Request) -> Response:
        return FileResponse(os.path.join(compile_mod.SDK_DIR, "cweb.h"), media_type="text/x-c")

    async def sdk_archive(request: Request) -> Response:
        return Response(
            sdk_tarball(),
            media_type="application/gzip",
            headers={"content-disposition": 'attachment; filename="cweb-sdk.tar.gz"'},
        )

    async def healthz(request: Request) -> Response:
        builder = box["builder"]
        ready = builder.sandboxed or builder.unsafe_builds
        return _json(
            {
                "status": "ok" if ready else "refusing_builds",
                "builder_id": builder.name,
                "slots": builder.slots,
                "running": builder.running,
                "mode": builder.mode,
                "sandboxed": builder.sandboxed,
                "compiler": builder.compiler_id,
                "sdk_digest": builder.sdk_digest,
                "toolchain": builder.toolchain(),
                "key_id": builder.signer.key_id,
                "object_store": None if builder.store.objects is None else f"{builder.store.objects.endpoint}/{builder.store.objects.bucket}",
            },
            200 if ready else 503,
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, "not_found", f"no such endpoint: {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "unexpected builder error")

    return Starlette(
        routes=[
            Route("/build", build, methods=["POST"]),
            Route("/artifacts/{module_hash}", artifact, methods=["GET"]),
            Route("/artifacts/{module_hash}/manifest", manifest, methods=["GET"]),
            Route("/sdk/cweb.h", sdk_header, methods=["GET"]),
            Route("/sdk.tar.gz", sdk_archive, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed, Exception: unexpected},
        lifespan=lifespan,
    )
