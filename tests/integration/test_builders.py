"""One build contract, two builders: LocalBuilder in-process and the builder
service (`python -m builder` in a subprocess) through RemoteBuilder.

Both compile with real gcc into real store directories; the api must not be
able to tell them apart, down to the compile-error body a user sees.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import json
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
from builder import limits
from builder.errors import BuildOutputFlood, CompileFailed, SourceRejected, SourceTooLarge
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

    def __init__(self, store: Path, env: dict[str, str] | None = None) -> None:
        self.store = store
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = store.parent / f"builder-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> BuilderService:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
        env.update(PYTHONPATH=str(ROOT), CWEB_UNSAFE_BUILDS="1", **self.env)
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


# ---- the farm: one queue over the embedded pool or over builder services ----

# Slow enough to be seen running and killed (4096 unrolled statements at -O2:
# about a second of gcc here), far inside the compile limits.
SLOW_BODY = """
#define A4(x) x x x x
#define A16(x) A4(A4(x))
#define A256(x) A16(A16(x))
int slow_unrolled(volatile int *p) {
    A16(A256(*p = *p * 3 + 1;))
    return *p;
}
"""

# Each `#pragma message` prints a 100 kB string: gcc floods its output.
FLOOD = (
    '#define S1 "' + "x" * 100 + '"\n'
    + "".join(f"#define S{i + 1} " + " ".join([f"S{i}"] * 10) + "\n" for i in range(1, 4))
    + "#pragma message S4\n" * 60
    + "int flood;\n"
).encode()


def slow_source() -> bytes:
    return fresh_source("slow").replace(b"#include <cweb.h>", b"#include <cweb.h>\n" + SLOW_BODY.encode(), 1)


class FarmHandle:
    """A BuildFarm as the api makes it (api.builder_discovery.make_farm), with its builders."""

    def __init__(self, kind: str, setup, services: list[BuilderService]) -> None:  # type: ignore[no-untyped-def]
        self.kind, self.setup, self.services = kind, setup, services
        self.farm = setup.farm


@pytest.fixture(scope="module")
def builder_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[BuilderService]]:
    """Two builder services on one shared store, two slots each."""
    store = tmp_path_factory.mktemp("farm") / "store"
    services = [BuilderService(store) for _ in range(2)]
    try:
        for s in services:
            s.start()
        yield services
    finally:
        for s in services:
            s.stop()


def _farm_handle(kind: str, runner: asyncio.Runner, store: Path, services: list[BuilderService]) -> FarmHandle:
    from api.builder_discovery import make_farm

    url = ",".join(s.url for s in services)
    setup = runner.run(make_farm(url, str(store), unsafe_builds=True, max_source_bytes=1 << 20, slots=2))
    return FarmHandle(kind, setup, services)


@pytest.fixture(params=["pool", "service"])
def farm(request: pytest.FixtureRequest, runner: asyncio.Runner, tmp_path: Path) -> Iterator[FarmHandle]:
    """The same farm contract over the embedded pool (2 slots) and over two builder services."""
    if request.param == "pool":
        handle = _farm_handle("pool", runner, tmp_path / "store", [])
    else:
        services = request.getfixturevalue("builder_services")
        for s in services:
            if s.proc is None:
                s.start()
        handle = _farm_handle("service", runner, services[0].store, services)
    yield handle
    runner.run(handle.setup.aclose())


async def _gather_builds(farm, sources: list[bytes], client: str = "c", **kw):  # type: ignore[no-untyped-def]
    """Run the builds at once, sampling the farm: (results or errors, most builds running at once per builder)."""
    peak: dict[str, int] = {}
    done = False

    async def sample() -> None:
        while not done:
            for b in farm.builders:
                peak[b["name"]] = max(peak.get(b["name"], 0), b["running"])
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        out = await asyncio.gather(*(farm.build(s, f"m{i}.c", client=client, **kw) for i, s in enumerate(sources)),
                                   return_exceptions=True)
    finally:
        done = True
        await sampler
    return out, peak


def test_farm_distinct_builds_all_succeed_within_slots(farm: FarmHandle, runner: asyncio.Runner) -> None:
    """Six different modules at once: all compile, no builder ever runs more than its slots,
    and with two builder services both take work."""
    results, peak = runner.run(_gather_builds(farm.farm, [fresh_source(f"d{i}") for i in range(6)]))
    for r in results:
        assert not isinstance(r, BaseException), r
    assert 6 == len({r.module_hash for r in results})
    assert all(r.build["joined"] is False and r.cache_hit is False for r in results)
    slots = {b["name"]: b["slots"] for b in farm.farm.builders}
    assert all(peak[name] <= slots[name] for name in peak), (peak, slots)
    used = {r.build["builder"] for r in results}
    if farm.kind == "service":
        assert 2 == len(used), used
        assert set(slots) == used
    else:
        assert {"local"} == used
    for r in results:
        b = farm.farm.get(r.build["id"])
        assert ("done", 1) == (b.state, b.attempts)
        assert b.queue_ms >= 0 and b.compile_ms > 0
        assert r.build_key == b.summary()["build_key"]


def test_farm_same_source_at_once_compiles_once(farm: FarmHandle, runner: asyncio.Runner) -> None:
    """Five builds of one new source at once: one compile, four joins, one artifact."""
    source = fresh_source("joined")
    results, _ = runner.run(_gather_builds(farm.farm, [source] * 5))
    for r in results:
        assert not isinstance(r, BaseException), r
    assert 1 == len({r.module_hash for r in results})
    assert 1 == len({r.build["id"] for r in results})
    assert [False, True, True, True, True] == sorted(r.build["joined"] for r in results)
    b = farm.farm.get(results[0].build["id"])
    assert (4, 1, False) == (b.joined, b.attempts, b.cache_hit)
    again = runner.run(farm.farm.build(source, "again.c"))
    assert (True, "cache", False) == (again.cache_hit, again.build["builder"], again.build["joined"])
    assert results[0].module_hash == again.module_hash


def test_farm_compile_error_is_final_and_never_joined_later(farm: FarmHandle, runner: asyncio.Runner) -> None:
    """A compile error fails its build once (no retry) and is not cached: the next try compiles again."""
    with pytest.raises(CompileFailed):
        runner.run(farm.farm.build(BROKEN, "broken.c"))
    failed = farm.farm.listing("failed")[0]
    assert ("compile_failed", 1) == (failed.error.code, failed.attempts)
    with pytest.raises(CompileFailed):
        runner.run(farm.farm.build(BROKEN, "broken.c"))
    assert failed.id != farm.farm.listing("failed")[0].id


def test_farm_output_flood_fails_and_is_not_cached(farm: FarmHandle, runner: asyncio.Runner) -> None:
    """gcc printing megabytes is killed: compile_output_flood (422), one attempt, nothing stored."""
    with pytest.raises(BuildOutputFlood) as info:
        runner.run(farm.farm.build(FLOOD, "flood.c"))
    assert (422, "compile_output_flood") == (info.value.status, info.value.code)
    b = farm.farm.listing("failed")[0]
    assert 1 == b.attempts
    assert 0 < b.log_bytes <= limits.BUILD_LOG_BYTES
    with pytest.raises(BuildOutputFlood):
        runner.run(farm.farm.build(FLOOD, "flood.c"))


def test_farm_is_fair_between_clients(runner: asyncio.Runner, tmp_path: Path) -> None:
    """One slot; client A queues eight builds, then B one: B's compiles second, not ninth."""
    from api.builder_discovery import make_farm

    setup = runner.run(make_farm("", str(tmp_path / "store"), unsafe_builds=True, max_source_bytes=1 << 20, slots=1))
    farm = setup.farm
    order: list[str] = []

    async def go() -> None:
        async def one(source: bytes, client: str) -> None:
            await farm.build(source, "f.c", client=client)
            order.append(client)

        many = [asyncio.create_task(one(fresh_source(f"a{i}"), "A")) for i in range(8)]
        while len(farm.queue) < 7:  # one of A's runs, seven wait
            await asyncio.sleep(0.005)
        b = asyncio.create_task(one(fresh_source("b"), "B"))
        while not [x for x in farm.listing("queued") if x.client == "B"]:
            await asyncio.sleep(0.005)
        queued = [x for x in farm.listing("queued") if x.client == "B"]
        assert 1 == farm.position(queued[0]), "B waits for one of A's builds, not seven"
        await asyncio.gather(*many, b)

    try:
        runner.run(go())
    finally:
        runner.run(setup.aclose())
    assert order.index("B") <= 2, order


def test_farm_live_log_streams_compiler_output(farm: FarmHandle, runner: asyncio.Runner) -> None:
    """A watcher sees state events, then the warnings gcc prints, then the end."""
    source = fresh_source("warned").replace(b"(void)ctx; (void)req;", b"(void)ctx; (void)req; int unused_live = 1;")

    async def go() -> list[dict]:
        task = asyncio.create_task(farm.farm.build(source, "live.c"))
        while not farm.farm.listing():
            await asyncio.sleep(0.005)
        b = next(x for x in farm.farm.listing() if not x.finished)
        q = farm.farm.watch(b)
        events: list[dict] = []
        while not events or events[-1]["event"] != "end":
            events.append(await asyncio.wait_for(q.get(), 60))
        await task
        return events

    events = runner.run(go())
    kinds = [e["event"] for e in events]
    assert "end" == kinds[-1] and "done" == events[-1]["state"]
    assert "log" in kinds
    text = "".join(e["text"] for e in events if e["event"] == "log")
    assert "unused_live" in text and "live.c" in text


def test_farm_survives_a_builder_killed_mid_compile(builder_services: list[BuilderService], runner: asyncio.Runner) -> None:
    """Two builder services; the one compiling a slow module is killed: the build is
    retried on the other and succeeds, attempts 2, nothing half-written in the store."""
    for s in builder_services:
        if s.proc is None:
            s.start()
    handle = _farm_handle("service", runner, builder_services[0].store, builder_services)
    farm = handle.farm
    by_name = {b.name: s for s in builder_services for b in handle.setup.discovery._by_url.values() if b.url == s.url}

    async def go():  # type: ignore[no-untyped-def]
        task = asyncio.create_task(farm.build(slow_source(), "slow.c"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = farm.listing("running")
            if running:
                break
            await asyncio.sleep(0.01)
        assert running, "the build never ran"
        victim = by_name[running[0].builder]
        await asyncio.sleep(0.2)  # gcc is running now
        victim.proc.kill()
        return await task, running[0], victim

    try:
        result, b, victim = runner.run(go())
        assert ("done", 2) == (b.state, b.attempts)
        assert b.tried[0] != b.tried[1]
        assert result.build["builder"] == b.tried[1]
        assert "lost the build" in "".join(b.log)
        store = builder_services[0].store
        art = store / "artifacts" / f"{result.module_hash}.so"
        assert result.module_hash == hashlib.sha256(art.read_bytes()).hexdigest()
        assert not [p for p in (store / "artifacts").iterdir() if p.name.startswith(".tmp-")]
    finally:
        runner.run(handle.setup.aclose())
        for s in builder_services:
            if s.proc is not None and s.proc.poll() is not None:
                s.log.close()
                s.proc = None


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        lines = [x for x in block.splitlines() if not x.startswith(":")]
        if not lines:
            continue
        kind = next(x[len("event: "):] for x in lines if x.startswith("event: "))
        data = next(x[len("data: "):] for x in lines if x.startswith("data: "))
        out.append((kind, json.loads(data)))
    return out


def test_api_deploys_through_the_farm_and_shows_builds(api_server: Server) -> None:
    """POST /mgnt answers build {id, builder, queue_ms, compile_ms, joined}; five deploys
    of one new source at once compile once; /builds, /builds/{id}, its SSE log and the
    farm's metrics tell the same story."""
    name = unique("farm")
    source = route_module(name, f"/{name}", "farmed").replace("(void)ctx; (void)req;", "(void)ctx; (void)req; int unused_api = 1;")
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: api_server.deploy(source, "farm.c"), range(5)))
    for a in answers:
        assert 200 == a.status_code, a.text
    builds = [a.json()["build"] for a in answers]
    assert 1 == len({b["id"] for b in builds}), builds
    assert [False, True, True, True, True] == sorted(b["joined"] for b in builds)
    first = next(b for b in builds if not b["joined"])
    assert {"id", "builder", "queue_ms", "compile_ms", "joined"} == set(first)
    assert first["compile_ms"] > 0 and first["queue_ms"] >= 0
    expected_builder = "local" if "CWEB_BUILDER_URL" not in api_server.env else None
    if expected_builder:
        assert expected_builder == first["builder"]
    with api_server.client() as c:
        one = c.get(f"/builds/{first['id']}").json()
        assert ("done", first["builder"], 4, 1) == (one["state"], one["builder"], one["joined"], one["attempts"])
        assert one["position"] is None and one["module_hash"] == answers[0].json()["module_hash"]
        listed = c.get("/builds", params={"state": "done"}).json()
        assert first["id"] in [b["id"] for b in listed["builds"]]
        assert {"done"} == {b["state"] for b in listed["builds"]}
        assert 0 == listed["queue_depth"] and listed["builders"]
        assert (400, "invalid_parameter") == (c.get("/builds", params={"state": "bogus"}).status_code,
                                              c.get("/builds", params={"state": "bogus"}).json()["error"])
        missing = c.get("/builds/nope")
        assert (404, "build_not_found") == (missing.status_code, missing.json()["error"])
        log = c.get(f"/builds/{first['id']}/log")
        assert log.headers["content-type"].startswith("text/event-stream")
        events = sse_events(log.text)
        assert "state" == events[0][0] and "end" == events[-1][0] and "done" == events[-1][1]["state"]
        assert "unused_api" in "".join(e["text"] for kind, e in events if kind == "log")
        metrics = c.get("/metrics").text
    assert "cweb_build_queue_depth 0.0" in metrics
    assert re.search(r'cweb_farm_builds_total\{builder="[^"]+",outcome="done"\} [1-9]', metrics), metrics
    assert re.search(r'cweb_build_compile_seconds_count\{builder="[^"]+"\} [1-9]', metrics)
    assert "cweb_build_queue_seconds_count" in metrics
    assert re.search(r'cweb_builds_total\{outcome="joined"\} 4\.0', metrics)
    again = api_server.deploy(source, "farm.c").json()["build"]
    assert ("cache", False) == (again["builder"], again["joined"])


def test_verify_reproducible_builds_twice_and_refuses_a_mismatch(api_server: Server) -> None:
    """?verify=reproducible compiles again without the cache; equal artifacts deploy,
    different ones (a source that bakes in __TIME__ and compiles for over a second)
    are refused 409 not_reproducible with both hashes, and nothing is activated."""
    name = unique("repro")
    with api_server.client() as c:
        ok = c.post("/mgnt", params={"verify": "reproducible"},
                    files={"code": ("repro.c", route_module(name, f"/{name}", "same").encode(), "text/x-c")})
        assert 200 == ok.status_code, ok.text
        report = ok.json()["reproducible"]
        assert report["match"] is True and 2 == len(report["builds"])
        assert {ok.json()["module_hash"]} == {b["module_hash"] for b in report["builds"]}
        assert report["builds"][0]["build_id"] != report["builds"][1]["build_id"]
        stamped = unique("stamp")
        source = route_module(stamped, f"/{stamped}", "stamped").replace(
            "#include <cweb.h>", "#include <cweb.h>\n" + SLOW_BODY + "\nconst char *built_at = __TIME__;\n", 1)
        bad = c.post("/mgnt", params={"verify": "reproducible"}, files={"code": ("stamp.c", source.encode(), "text/x-c")})
        assert (409, "not_reproducible") == (bad.status_code, bad.json()["error"]), bad.text
        hashes = [b["module_hash"] for b in bad.json()["builds"]]
        assert 2 == len(set(hashes))
        assert 404 == c.get(f"/modules/{stamped}").status_code
        assert 400 == c.post("/mgnt", params={"verify": "maybe"}, files={"code": ("x.c", b"int x;", "text/x-c")}).status_code
    assert "NOT reproducible" in api_server.logs()


def test_cweb_deploy_at_a_terminal_shows_its_build_as_it_comes(server: Server, tmp_path: Path) -> None:
    """`cweb deploy` on a terminal names the builder and prints gcc's output
    while the deploy waits (GET /builds/{build_id}/log); piped, it prints the answer only."""
    from tests.unit.test_cli_offline import CWEB, run_cweb_on_tty

    name = unique("clilive")
    src = tmp_path / "live.c"
    src.write_text(route_module(name, f"/{name}", "live").replace("(void)ctx; (void)req;", "(void)ctx; (void)req; int unused_tty = 1;"))
    rc, output = run_cweb_on_tty("--server", server.url, "deploy", str(src), cwd=tmp_path, timeout=120)
    assert 0 == rc, output
    assert "compiling on local" in output
    # Once live from gcc (module-relative name), once as the answer's diagnostic (local path).
    assert output.count("unused variable 'unused_tty'") == 2, output
    src.write_text(src.read_text().replace("unused_tty", "unused_pipe"))
    piped = subprocess.run([sys.executable, "-I", "-S", str(CWEB), "--server", server.url, "deploy", str(src)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert 0 == piped.returncode, piped.stderr
    assert "compiling on" not in piped.stderr and 1 == piped.stderr.count("unused variable 'unused_pipe'")
    with server.client() as c:
        chosen = "0123456789abcdef"
        r = c.post("/mgnt", params={"build_id": chosen},
                   files={"code": ("id.c", route_module(unique("bid"), "/bid_" + uuid.uuid4().hex[:8], "x").encode(), "text/x-c")})
        assert 200 == r.status_code, r.text
        assert chosen == r.json()["build"]["id"]
        assert "done" == c.get(f"/builds/{chosen}").json()["state"]
        assert 400 == c.post("/mgnt", params={"build_id": "../x"}, files={"code": ("x.c", b"int x;", "text/x-c")}).status_code
