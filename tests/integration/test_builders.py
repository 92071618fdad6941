"""One build contract, two builders: LocalBuilder in-process and the builder
service (`python -m builder` in a subprocess) through RemoteBuilder.

Both compile with real gcc into real store directories; the api must not be
able to tell them apart, down to the compile-error body a user sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.remote_builder import BuilderUnreachable, RemoteBuilder
from builder.errors import CompileFailed, SourceRejected, SourceTooLarge
from builder.local import LocalBuilder
from tests.conftest import ROOT, Server, free_port, route_module, stop_process, unique

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def fresh_source(body: str = "hello") -> bytes:
    """A module no earlier test has built (a unique name defeats the cache)."""
    return route_module(unique("b"), f"/{uuid.uuid4().hex[:12]}", body).encode()


BROKEN = b"""#include <cweb.h>
static int handler(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    return undeclared_thing + 1;
}
"""


class BuilderService:
    """`python -m builder` on a free loopback port, with its own store."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = store.parent / f"builder-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> BuilderService:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
        env.update(PYTHONPATH=str(ROOT), CWEB_UNSAFE_BUILDS="1")
        self.store.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "--host", "127.0.0.1", "--port", str(self.port), "--store", str(self.store)],
            cwd=str(ROOT), env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"builder exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"builder did not become healthy: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        self.log.close()
        self.proc = None


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the module: builders keep loop-bound state."""
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def builder_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuilderService]:
    service = BuilderService(tmp_path_factory.mktemp("remote") / "store").start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def local_builder(tmp_path_factory: pytest.TempPathFactory) -> LocalBuilder:
    return LocalBuilder(str(tmp_path_factory.mktemp("local") / "store"), unsafe_builds=True)


@pytest.fixture(scope="module")
def remote_builder(builder_service: BuilderService, runner: asyncio.Runner) -> Iterator[RemoteBuilder]:
    rb = RemoteBuilder(builder_service.url)
    yield rb
    runner.run(rb.aclose())


@pytest.fixture(params=["local", "remote"])
def builder(request: pytest.FixtureRequest) -> LocalBuilder | RemoteBuilder:
    """Each contract test runs against both builders."""
    return request.getfixturevalue(f"{request.param}_builder")


def test_build_returns_every_result_field(builder, runner: asyncio.Runner) -> None:
    """A first build compiles and reports hashes, key, timing and a manifest."""
    source = fresh_source()
    result = runner.run(builder.build(source, "hello.c"))
    assert HEX64.match(result.module_hash)
    assert hashlib.sha256(source).hexdigest() == result.source_sha256
    assert HEX64.match(result.build_key)
    assert result.cache_hit is False
    assert result.build_ms > 0
    assert [] == result.warnings
    assert result.module_hash == result.manifest["module_hash"]
    assert result.source_sha256 == result.manifest["source_sha256"]
    assert result.build_key == result.manifest["build_key"]
    assert "hello.c" == result.manifest["source_name"]


def test_compile_error_carries_diagnostics_and_log(builder, runner: asyncio.Runner) -> None:
    """gcc's rejection is CompileFailed (422) with parsed diagnostics under the upload's name."""
    with pytest.raises(CompileFailed) as info:
        runner.run(builder.build(BROKEN, "broken.c"))
    exc = info.value
    assert (422, "compile_failed") == (exc.status, exc.code)
    errors = [d for d in exc.extra["diagnostics"] if d["severity"] == "error"]
    assert errors, exc.extra
    first = errors[0]
    assert ("broken.c", 3) == (first["file"], first["line"])
    assert {"file", "line", "column", "severity", "message"} <= set(first)
    assert "undeclared_thing" in first["message"]
    assert "broken.c:3:" in exc.extra["log"]
    assert "undeclared_thing" in exc.message


def test_second_build_is_a_cache_hit(builder, runner: asyncio.Runner) -> None:
    """The same source again compiles nothing and names the same artifact."""
    source = fresh_source()
    first = runner.run(builder.build(source, "again.c"))
    second = runner.run(builder.build(source, "again.c"))
    assert (False, True) == (first.cache_hit, second.cache_hit)
    assert first.module_hash == second.module_hash
    assert first.build_key == second.build_key
    assert first.module_hash == second.manifest["module_hash"]


def test_rebuild_without_cache_is_reproducible(builder, runner: asyncio.Runner) -> None:
    """With the action cache bypassed, gcc runs again and produces identical bytes."""
    source = fresh_source()
    first = runner.run(builder.build(source, "repro.c"))
    again = runner.run(builder.build(source, "repro.c", use_cache=False))
    assert again.cache_hit is False
    assert first.module_hash == again.module_hash


def test_warnings_are_reported_not_fatal(builder, runner: asyncio.Runner) -> None:
    """-Wall warnings come back as warnings of a successful build."""
    source = fresh_source().replace(b"(void)ctx; (void)req;", b"(void)ctx; (void)req; int unused_local = 1;")
    result = runner.run(builder.build(source, "warn.c"))
    assert any("unused_local" in w["message"] and w["severity"] == "warning" for w in result.warnings), result.warnings


@pytest.mark.parametrize(
    ("source", "exc_type", "status", "code"),
    [
        (b"   \n", SourceRejected, 422, "bad_source"),
        (b"int x;\0", SourceRejected, 422, "bad_source"),
        (b"\xff\xfe not utf-8", SourceRejected, 422, "bad_source"),
        (b"/*" + b"x" * (1 << 20) + b"*/", SourceTooLarge, 413, "source_too_large"),
    ],
    ids=["empty", "nul", "not-utf8", "too-large"],
)
def test_unbuildable_source_is_rejected(builder, runner: asyncio.Runner, source: bytes, exc_type: type, status: int, code: str) -> None:
    """Sources that are not C text, or too large, are refused with the same class, status and code."""
    with pytest.raises(exc_type) as info:
        runner.run(builder.build(source, "bad.c"))
    assert (status, code) == (info.value.status, info.value.code)


def test_both_builders_produce_the_same_module_hash(local_builder, remote_builder, runner: asyncio.Runner) -> None:
    """The builder service and the embedded builder make byte-identical artifacts."""
    source = fresh_source("same everywhere")
    local = runner.run(local_builder.build(source, "same.c"))
    remote = runner.run(remote_builder.build(source, "same.c"))
    assert local.module_hash == remote.module_hash
    assert local.source_sha256 == remote.source_sha256


def test_remote_builder_interface_matches_local(remote_builder, runner: asyncio.Runner) -> None:
    """What the api reads from a builder: mode, sandboxed and a glue_object() that is a no-op."""
    assert ("remote", True) == (remote_builder.mode, remote_builder.sandboxed)
    assert runner.run(remote_builder.glue_object()) is None


def test_unreachable_builder_is_a_503_build_error(runner: asyncio.Runner) -> None:
    """A builder that does not answer becomes BuilderUnreachable (503), not a crash of the api."""
    rb = RemoteBuilder(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BuilderUnreachable) as info:
            runner.run(rb.build(b"int x;", "x.c"))
    finally:
        runner.run(rb.aclose())
    assert (503, "builder_unreachable") == (info.value.status, info.value.code)


def test_service_serves_artifacts_manifests_and_sdk(builder_service: BuilderService, remote_builder, runner: asyncio.Runner) -> None:
    """GET /artifacts/{hash} returns the bytes of that hash; the SDK and health answer."""
    result = runner.run(remote_builder.build(fresh_source(), "art.c"))
    with httpx.Client(base_url=builder_service.url, timeout=30) as c:
        so = c.get(f"/artifacts/{result.module_hash}")
        assert 200 == so.status_code
        assert result.module_hash == hashlib.sha256(so.content).hexdigest()
        manifest = c.get(f"/artifacts/{result.module_hash}/manifest").json()
        assert result.build_key == manifest["build_key"]
        missing = c.get(f"/artifacts/{'0' * 64}")
        assert (404, "artifact_not_found") == (missing.status_code, missing.json()["error"])
        assert 404 == c.get("/artifacts/not-a-hash/manifest").status_code
        header = c.get("/sdk/cweb.h")
        assert 200 == header.status_code
        assert b"module_t" in header.content
        with tarfile.open(fileobj=io.BytesIO(c.get("/sdk.tar.gz").content)) as tar:
            assert "cweb-sdk/cweb.h" in tar.getnames()
            assert not {"cweb-sdk/cweb_frame.h", "cweb-sdk/cweb_internal.h"} & set(tar.getnames())
        health = c.get("/healthz").json()
        assert "ok" == health["status"]
        not_multipart = c.post("/build", content=b"int x;", headers={"content-type": "text/plain"})
        assert (400, "not_multipart") == (not_multipart.status_code, not_multipart.json()["error"])
        no_code = c.post("/build", files={"other": ("a.c", b"int x;")})
        assert (400, "missing_code") == (no_code.status_code, no_code.json()["error"])
    assert runner.run(remote_builder.manifest("0" * 64)) is None
    assert result.module_hash == hashlib.sha256(runner.run(remote_builder.artifact(result.module_hash))).hexdigest()


@pytest.fixture(params=["local", "remote"])
def api_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """The real api, building in-process or through a builder service on the same store."""
    data = tmp_path / "data"
    env: dict[str, str] = {}
    service = None
    if request.param == "remote":
        service = BuilderService(data / "store").start()
        env["CWEB_BUILDER_URL"] = service.url
    server = Server(data, env=env)
    try:
        yield server.start()
    finally:
        server.stop()
        if service is not None:
            service.stop()


def test_api_answers_the_same_through_either_builder(api_server: Server) -> None:
    """Deploy, route and a compile error look identical to a user with either builder."""
    name = unique("api")
    path = f"/{name}"
    with api_server.client() as c:
        health = c.get("/healthz").json()
    expected_mode = "remote" if "CWEB_BUILDER_URL" in api_server.env else health["builds"]
    assert expected_mode == health["builds"]
    ok = api_server.deploy(route_module(name, path, "through the builder"), "route.c")
    assert 200 == ok.status_code, ok.text
    assert name == ok.json()["name"]
    with api_server.client() as c:
        assert "through the builder" == c.get(path).text
    bad = api_server.deploy(BROKEN, "broken.c")
    assert 422 == bad.status_code
    body = bad.json()
    assert "compile_failed" == body["error"]
    assert ("broken.c", 3) == (body["diagnostics"][0]["file"], body["diagnostics"][0]["line"])
    assert "broken.c:3:" in body["log"]
