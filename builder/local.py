"""The builder used in-process: compile, cache, store. The builder service
(builder/service.py) wraps the same class behind HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from builder import cache, compile, diagnostics, elf, limits
from builder.errors import BuildBusy, CompileFailed, SourceRejected, SourceTooLarge
from builder.interface import Builder
from builder.objects import ObjectStore
from builder.store import Store, write_atomic
from runtime import provenance

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SOURCE_NAME = "module.c"


@dataclass
class BuildResult:
    module_hash: str
    source_sha256: str
    build_key: str
    cache_hit: bool
    build_ms: float
    warnings: list[dict] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    # Set by the farm (builder/farm.py): {id, builder, queue_ms, compile_ms, joined}.
    build: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The fields every build answer carries (deploy, check, builder service)."""
        out = {
            "module_hash": self.module_hash,
            "source_sha256": self.source_sha256,
            "build_key": self.build_key,
            "cache_hit": self.cache_hit,
            "build_ms": round(self.build_ms, 2),
            "warnings": self.warnings,
        }
        if self.build:
            out["build"] = self.build
        return out


def display_name(filename: str | None) -> str:
    """The name shown in diagnostics: the upload's base name when it is tame."""
    base = os.path.basename((filename or "").replace("\\", "/"))
    return base if _SAFE_NAME.match(base) else SOURCE_NAME


def check_source(source: bytes, max_bytes: int) -> None:
    if len(source) > max_bytes:
        raise SourceTooLarge(f"source is {len(source)} bytes; the limit is {max_bytes}")
    if not source.strip():
        raise SourceRejected("source is empty")
    if b"\0" in source:
        raise SourceRejected("source contains NUL bytes: upload C text, not a binary")
    try:
        source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceRejected(f"source is not UTF-8 text (byte {exc.start})") from exc


class LocalBuilder(Builder):
    """Compiles in this process, at most `slots` builds at once (one per core
    by default). As the farm's embedded builder it is the local pool; in the
    builder service it is what one builder replica runs."""

    name = "local"

    def __init__(self, store_dir: str, *, unsafe_builds: bool = False, max_source_bytes: int = limits.MAX_SOURCE_BYTES,
                 slots: int = 0, name: str = "local", key_path: str | None = None,
                 objects: ObjectStore | None = None) -> None:
        self.store = Store(store_dir, objects)
        self.name = name
        # Signs every manifest this builder writes; its public key goes into
        # the store, where the runtime looks for trusted builders.
        self.signer = provenance.Signer.load_or_create(name, key_path)
        self.signer.register(store_dir)
        self.sandboxed = compile.sandbox_works()
        self.unsafe_builds = unsafe_builds
        self.compiler = compile.Compiler(self.sandboxed)
        self.compiler_id = compile.compiler_identity()
        self.sdk_digest = compile.sdk_digest()
        self.abi_version = compile.sdk_abi_version()
        self.max_source_bytes = max_source_bytes
        self.flags = compile.CFLAGS + compile.MODULE_CFLAGS + compile.LDFLAGS
        self.slots = slots or limits.default_slots()
        self._slots = asyncio.Semaphore(self.slots)
        self._pending = 0
        self._glue_lock = asyncio.Lock()

    @property
    def running(self) -> int:
        """Builds compiling or waiting for a slot."""
        return self._pending

    @property
    def mode(self) -> str:
        return "bubblewrap" if self.sandboxed else "unsandboxed"

    def key_for(self, source_sha256: str) -> str:
        return cache.build_key(
            source_sha256=source_sha256,
            sdk_digest=self.sdk_digest,
            compiler=self.compiler_id,
            flags=self.flags,
            abi_version=self.abi_version,
        )

    def toolchain(self) -> dict:
        """Everything but the source that goes into a build key (builders of one farm must agree)."""
        return {"sdk_digest": self.sdk_digest, "compiler": self.compiler_id, "flags": self.flags, "abi_version": self.abi_version}

    def cached(self, source_sha: str) -> BuildResult | None:
        """The action cache's answer for this source, or None (blocking: hashes the artifact)."""
        key = self.key_for(source_sha)
        hit = self.store.lookup_action(key)
        if not hit:
            return None
        manifest = self.store.manifest(hit) or {}
        if "provenance" not in manifest:
            return None  # built before manifests were signed: build (and sign) it again
        return BuildResult(hit, source_sha, key, True, 0.0, manifest.get("warnings", []), manifest)

    async def build(self, source: bytes, filename: str | None = None, *, use_cache: bool = True,
                    on_log: Callable[[str], None] | None = None) -> BuildResult:
        """Source -> artifact in the store. Raises a BuildError subclass on failure.

        on_log sees the compiler's output as it comes."""
        check_source(source, self.max_source_bytes)
        compile.require_sandbox(self.sandboxed, self.unsafe_builds)
        started = time.perf_counter()
        source_sha = hashlib.sha256(source).hexdigest()
        key = self.key_for(source_sha)
        if use_cache:
            # Off the loop: the hit is hashed again (a corrupt artifact is evicted).
            hit = await asyncio.to_thread(self.cached, source_sha)
            if hit:
                hit.build_ms = (time.perf_counter() - started) * 1000
                return hit
        if self._pending >= self.slots + limits.MAX_WAITING_BUILDS:
            raise BuildBusy("too many builds are running; retry shortly")
        self._pending += 1
        try:
            async with self._slots:
                return await self._compile(source, source_sha, key, display_name(filename), started, on_log)
        finally:
            self._pending -= 1

    # The farm's executor interface (builder/farm.py Executor).
    execute = build

    async def glue_object(self) -> str:
        """The glue compiled once per SDK digest, kept in the store."""
        path = os.path.join(self.store.root, "glue", f"{self.sdk_digest}.o")
        async with self._glue_lock:
            if os.path.exists(path):
                return path
            scratch = tempfile.mkdtemp(prefix="cweb-glue-")
            try:
                sources = sorted(n for n in os.listdir(compile.SDK_DIR) if n.endswith(".c"))
                # Off the loop: the process limit reads /proc (compile._uid_tasks).
                argv = await asyncio.to_thread(self.compiler.argv, scratch, "", "glue.o", [f"{self._sdk_path()}/{n}" for n in sources], link=False)
                run = await self.compiler.run(argv, scratch, wall_s=limits.GLUE_WALL_SECONDS)
                if run.returncode != 0:
                    raise CompileFailed("the SDK glue failed to compile", log=run.output, diagnostics=diagnostics.parse(run.output))
                with open(os.path.join(scratch, "glue.o"), "rb") as f:
                    write_atomic(path, f.read(), 0o444)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return path

    async def manifest(self, module_hash: str) -> dict | None:
        if self.store.objects is None:
            return self.store.manifest(module_hash)
        return await asyncio.to_thread(self.store.manifest, module_hash)  # may fetch from the object store

    async def source(self, source_sha256: str) -> bytes | None:
        if self.store.objects is None:
            return self.store.source(source_sha256)
        return await asyncio.to_thread(self.store.source, source_sha256)

    def _sdk_path(self) -> str:
        return compile.SANDBOX_SDK if self.sandboxed else compile.SDK_DIR

    async def _compile(self, source: bytes, source_sha: str, key: str, shown: str, started: float,
                       on_log: Callable[[str], None] | None = None) -> BuildResult:
        glue = await self.glue_object()
        scratch = tempfile.mkdtemp(prefix="cweb-build-")
        try:
            with open(os.path.join(scratch, SOURCE_NAME), "wb") as f:
                f.write(source)
            argv = await asyncio.to_thread(self.compiler.argv, scratch, glue, "module.so", [SOURCE_NAME], link=True)
            live = None if on_log is None else (lambda text: on_log(self._scrub(text, scratch, shown)))
            run = await self.compiler.run(argv, scratch, live)
            log = self._scrub(run.output, scratch, shown)
            diags = diagnostics.parse(log)
            if run.returncode != 0:
                errors = [d for d in diags if d["severity"] == "error"]
                first = errors[0]["message"] if errors else "the compiler failed"
                raise CompileFailed(f"compilation failed: {first}", diagnostics=diags, log=log)
            data = elf.read_shared_object(os.path.join(scratch, "module.so"), limits.MAX_ARTIFACT_BYTES)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        module_hash = hashlib.sha256(data).hexdigest()
        build_ms = (time.perf_counter() - started) * 1000
        warnings = [d for d in diags if d["severity"] in ("warning", "note")]
        manifest = {
            "module_hash": module_hash,
            "source_sha256": source_sha,
            "source_name": shown,
            "build_key": key,
            "builder_id": self.name,
            "toolchain_digest": provenance.toolchain_digest(self.toolchain()),
            "compiler": self.compiler_id,
            "flags": self.flags,
            "sdk_digest": self.sdk_digest,
            "abi_version": self.abi_version,
            "sandbox": self.mode,
            "built_at": time.time(),
            "build_ms": round(build_ms, 2),
            "size": len(data),
            "warnings": warnings,
        }
        manifest["provenance"] = self.signer.sign(build_key=key, toolchain=self.toolchain(),
                                                  source_sha256=source_sha, module_hash=module_hash)
        # Written (and fsynced) on a thread: a slow or full disk delays this
        # deploy only; ENOSPC comes back as OSError (the api answers 507).
        await asyncio.to_thread(self._keep, source_sha, source, module_hash, data, manifest, key)
        return BuildResult(module_hash, source_sha, key, False, build_ms, warnings, manifest)

    def _keep(self, source_sha: str, source: bytes, module_hash: str, data: bytes, manifest: dict, key: str) -> None:
        self.store.put_source(source_sha, source)
        self.store.put_artifact(module_hash, data, manifest)
        self.store.record_action(key, module_hash)

    @staticmethod
    def _scrub(output: str, scratch: str, shown: str) -> str:
        """Hide server paths; show the uploader's file name."""
        out = output.replace(scratch + "/", "").replace(compile.SDK_DIR, "cweb-sdk")
        out = out.replace(compile.SANDBOX_BUILD + "/", "").replace(compile.SANDBOX_SDK + "/", "cweb-sdk/")
        out = re.sub(r"(?m)^/\S*/(collect2|ld)", r"\1", out)
        # gcc's temporary objects live in the jail's /tmp: name them after the source.
        out = re.sub(r"/tmp/cc\w+\.o", "module.o", out)
        if shown != SOURCE_NAME:
            out = re.sub(rf"(?<![\w./-]){re.escape(SOURCE_NAME)}(?=[:(])", shown, out)
        return out


def sdk_tarball() -> bytes:
    """Every public SDK header (not the glue's own) as a gzip tarball rooted at cweb-sdk/."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in sorted(os.listdir(compile.SDK_DIR)):
            if name.endswith(".h") and name not in compile.GLUE_HEADERS:
                tar.add(os.path.join(compile.SDK_DIR, name), arcname=f"cweb-sdk/{name}")
    return buf.getvalue()
