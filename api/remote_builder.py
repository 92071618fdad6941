"""The builder service (`python -m builder`) seen through LocalBuilder's
interface, so the api does not care which one it has.

The service answers build errors with the api's own JSON bodies; they are
turned back into the builder.errors class of the same code, so a compile
error through the builder container reaches the user exactly as one from the
embedded builder (status, code, message, diagnostics, log). Transport
failures become BuilderUnreachable (503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import orjson

from builder import errors, limits
from builder.interface import Builder
from builder.local import BuildResult
from builder.objects import ObjectStore
from builder.store import Store, is_hash

# Seconds to wait for a build: queueing behind others plus the compile itself.
BUILD_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 5.0
# Seconds of silence on a streamed build before the builder counts as lost:
# the farm sends a builder no more than its slots, so a compile starts at
# once and ends within its wall limit (plus the glue's, once per SDK).
STREAM_SILENCE_S = 3 * limits.COMPILE_WALL_SECONDS


class BuilderUnreachable(errors.BuildError):
    """The builder service did not answer (down, restarting, wrong URL)."""

    code = "builder_unreachable"
    status = 503
    retryable = True


def _error_classes() -> dict[str, type[errors.BuildError]]:
    """Every BuildError subclass by its code (walks the hierarchy)."""
    found: dict[str, type[errors.BuildError]] = {}
    pending: list[type[errors.BuildError]] = [errors.BuildError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


def error_from_response(status: int, body: object) -> errors.BuildError:
    """The BuildError an error answer of the builder stands for."""
    if not isinstance(body, dict) or "error" not in body:
        return BuilderUnreachable(f"the builder answered {status} without an error body")
    extra = {k: v for k, v in body.items() if k not in ("error", "message")}
    code = str(body["error"])
    message = str(body.get("message", code))
    cls = _error_classes().get(code)
    exc = (cls or errors.BuildError)(message, **extra)
    if cls is None or cls.status != status:
        # A code the api does not know as a class (e.g. not_multipart): keep it as sent.
        exc.code = code
        exc.status = status
    return exc


class RemoteBuilder(Builder):
    """Builds through the builder service at `url` (e.g. http://builder:8081)."""

    mode = "remote"
    sandboxed = True

    def __init__(self, url: str, *, store_dir: str | None = None, timeout: float = BUILD_TIMEOUT_S,
                 objects: ObjectStore | None = None) -> None:
        self.url = url.rstrip("/")
        # What the builder says about itself in /healthz (refresh()).
        self.name = self.url
        self.slots = 1
        self.toolchain: dict | None = None
        self.timeout = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S)
        # The api needs no store of its own; give one only where it is mounted,
        # or as the node's cache of the object store (objects).
        self.store = Store(store_dir, objects) if store_dir else None
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout)
        return self._client

    async def glue_object(self) -> None:
        """No-op: the builder service compiles its own glue."""
        return None

    async def _request(self, method: str, path: str, **kw: object) -> httpx.Response:
        try:
            return await self._http().request(method, path, **kw)  # type: ignore[arg-type]
        except httpx.TimeoutException as exc:
            raise BuilderUnreachable(f"the builder at {self.url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise BuilderUnreachable(f"cannot reach the builder at {self.url}: {exc}") from exc

    async def build(self, source: bytes, filename: str | None = None, *, use_cache: bool = True) -> BuildResult:
        """Source -> artifact in the shared store. Raises a BuildError subclass on failure."""
        params = {} if use_cache else {"cache": "0"}
        resp = await self._request("POST", "/build", params=params, files={"code": (filename or "module.c", source, "text/x-c")})
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code != 200:
            raise error_from_response(resp.status_code, body)
        return _result(body)

    async def execute(self, source: bytes, filename: str | None = None, *, use_cache: bool = True,
                      on_log: Callable[[str], None] | None = None) -> BuildResult:
        """The farm's executor: the build streamed (POST /build?stream=1), the
        compiler's output to on_log as it comes. A connection that fails or
        ends before the result is BuilderLost (the farm retries elsewhere)."""
        params = {"stream": "1"} if use_cache else {"stream": "1", "cache": "0"}
        timeout = httpx.Timeout(STREAM_SILENCE_S, connect=CONNECT_TIMEOUT_S)
        files = {"code": (filename or "module.c", source, "text/x-c")}
        try:
            async with self._http().stream("POST", "/build", params=params, files=files, timeout=timeout) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise error_from_response(resp.status_code, _json_or_none(resp))
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        msg = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise errors.BuilderLost(f"the builder {self.name} sent a broken stream") from exc
                    if "log" in msg:
                        if on_log is not None:
                            on_log(str(msg["log"]))
                    elif "result" in msg:
                        return _result(msg["result"])
                    elif "error" in msg:
                        raise error_from_response(int(msg.get("status", 500)), msg["error"])
        except httpx.ConnectError as exc:
            raise BuilderUnreachable(f"cannot reach the builder {self.name}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise errors.BuilderLost(f"the builder {self.name} went silent mid-build") from exc
        except httpx.HTTPError as exc:
            raise errors.BuilderLost(f"the builder {self.name} dropped the build: {exc}") from exc
        raise errors.BuilderLost(f"the builder {self.name} ended the build without a result")

    async def refresh(self) -> dict | None:
        """/healthz once: the builder's id, slots and toolchain, or None when it does not answer ok."""
        try:
            resp = await self._http().get("/healthz", timeout=httpx.Timeout(3.0, connect=2.0))
        except httpx.HTTPError:
            return None
        body = _json_or_none(resp)
        if resp.status_code != 200 or not isinstance(body, dict):
            return None
        self.name = str(body.get("builder_id") or self.url)
        self.slots = max(1, int(body.get("slots") or 1))
        self.toolchain = body.get("toolchain") if isinstance(body.get("toolchain"), dict) else None
        return body

    async def artifact(self, module_hash: str) -> bytes:
        """The artifact's bytes, fetched from the builder."""
        resp = await self._request("GET", f"/artifacts/{module_hash}")
        if resp.status_code != 200:
            raise error_from_response(resp.status_code, _json_or_none(resp))
        return resp.content

    async def manifest(self, module_hash: str) -> dict | None:
        """The artifact's manifest (from the shared store where it is mounted,
        else from the builder), or None when there is none."""
        if self.store is not None:
            if self.store.objects is None:
                return self.store.manifest(module_hash)
            return await asyncio.to_thread(self.store.manifest, module_hash)
        resp = await self._request("GET", f"/artifacts/{module_hash}/manifest")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise error_from_response(resp.status_code, _json_or_none(resp))
        return resp.json()

    async def source(self, source_sha256: str) -> bytes | None:
        """Sources are kept in the builder's store: readable where it is mounted or through the object store."""
        if self.store is None:
            return None
        if self.store.objects is None:
            return self.store.source(source_sha256)
        return await asyncio.to_thread(self.store.source, source_sha256)

    async def healthy(self, attempts: int = 1, delay: float = 0.5) -> bool:
        """Whether the builder answers /healthz with 200 (tried `attempts` times)."""
        for i in range(attempts):
            try:
                if (await self._http().get("/healthz")).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if i + 1 < attempts:
                await asyncio.sleep(delay)
        return False

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _json_or_none(resp: httpx.Response) -> object:
    try:
        return resp.json()
    except ValueError:
        return None


def _result(body: object) -> BuildResult:
    if not isinstance(body, dict) or not is_hash(str(body.get("module_hash", ""))):
        raise BuilderUnreachable("the builder answered 200 without a build result")
    return BuildResult(
        module_hash=body["module_hash"],
        source_sha256=body["source_sha256"],
        build_key=body["build_key"],
        cache_hit=bool(body["cache_hit"]),
        build_ms=float(body["build_ms"]),
        warnings=list(body.get("warnings") or []),
        manifest=dict(body.get("manifest") or {}),
    )
