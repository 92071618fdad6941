"""Artifacts in an S3-compatible object store, end to end: real api nodes
(`python -m api`, embedded agent and workers), a real `python -m builder`,
real gcc, and a real SeaweedFS (tests/objects.py). Two nodes are two data
dirs and two store dirs on this machine sharing one bucket."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, route_module, unique
from tests.integration.test_builders import BuilderService
from tests.objects import IMAGE, S3Target

# Two or three api processes start per test: each takes 20-40 s on this
# machine under load, beyond the suite's default 120 s per test.
pytestmark = pytest.mark.timeout(600)


def node(tmp_path: Path, label: str, s3: S3Target, **env: str) -> Server:
    """An api node with its own data dir and store dir, on the test's bucket."""
    data = tmp_path / label / "data"
    data.parent.mkdir(parents=True, exist_ok=True)
    return Server(data, env={**s3.env(), "CWEB_STORE_DIR": str(tmp_path / label / "store"), **env})


def bucket_keys(s3: S3Target) -> set[str]:
    client = s3.client()
    return {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket) for o in page.get("Contents", [])}


def test_second_node_gets_the_first_nodes_build_from_the_action_cache(tmp_path: Path, s3_endpoint: S3Target) -> None:
    """Node A builds and writes through to S3; node B (another data dir and
    store, the same bucket) deploys the same source: an action-cache hit
    through S3, nothing compiled, the artifact fetched, verified and served."""
    name = unique("s3a")
    source = route_module(name, f"/{name}", "built once")
    a = node(tmp_path, "a", s3_endpoint).start()
    try:
        first = a.deploy(source, "shared.c")
        assert 200 == first.status_code, first.text
        assert first.json()["cache_hit"] is False
    finally:
        a.stop()
    module_hash = first.json()["module_hash"]
    keys = bucket_keys(s3_endpoint)
    assert {f"artifacts/{module_hash}.so", f"artifacts/{module_hash}.json"} <= keys
    assert any(k.startswith("actions/") for k in keys) and any(k.startswith("sources/") for k in keys)
    assert any(k.startswith("builders/") for k in keys)

    b = node(tmp_path, "b", s3_endpoint).start()
    try:
        assert not (tmp_path / "b" / "store" / "artifacts" / f"{module_hash}.so").exists()
        second = b.deploy(source, "shared.c")
        assert 200 == second.status_code, second.text
        assert second.json()["cache_hit"] is True
        assert module_hash == second.json()["module_hash"]
        with b.client() as c:
            assert "built once" == c.get(f"/{name}").text
            # A hit queues and compiles nothing: node B's one build is the cache's answer.
            assert [("done", "cache", True)] == [(x["state"], x["builder"], x["cache_hit"]) for x in c.get("/builds").json()["builds"]]
            # The manifest, its verified provenance and the source, all read through S3.
            art = c.get(f"/artifacts/{module_hash}").json()
            assert art["provenance"]["verified"] is True, art["provenance"]
            assert source.encode() == c.get(f"/artifacts/{module_hash}/source").content
        assert (tmp_path / "b" / "store" / "artifacts" / f"{module_hash}.so").read_bytes() == \
            (tmp_path / "a" / "store" / "artifacts" / f"{module_hash}.so").read_bytes()
    finally:
        b.stop()


def test_cold_node_serves_what_it_never_built_and_refuses_a_tampered_artifact(tmp_path: Path, s3_endpoint: S3Target) -> None:
    """Node B starts with node A's registry and an empty store: ensure()
    fetches the active artifact from S3 before its agent loads it. A rollback
    to a version whose object was tampered with is refused with a clear
    error, nothing of it is kept, and the active version keeps serving."""
    name = unique("s3b")
    a = node(tmp_path, "a", s3_endpoint).start()
    try:
        v1 = a.deploy(route_module(name, f"/{name}", "version one"), "v.c")
        v2 = a.deploy(route_module(name, f"/{name}", "version two"), "v.c")
        assert 200 == v1.status_code and 200 == v2.status_code, (v1.text, v2.text)
    finally:
        a.stop()
    h1, h2 = v1.json()["module_hash"], v2.json()["module_hash"]
    # The registry (what is active) as node B's, its store empty: a node that
    # joins later sees the same through the shared database.
    (tmp_path / "b" / "data").mkdir(parents=True, exist_ok=True)
    for f in (tmp_path / "a" / "data").glob("registry.db*"):
        shutil.copy(f, tmp_path / "b" / "data" / f.name)
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=f"artifacts/{h1}.so", Body=b"\x7fELF not what was built")

    b = node(tmp_path, "b", s3_endpoint).start()
    try:
        store = tmp_path / "b" / "store"
        with b.client() as c:
            assert "version two" == c.get(f"/{name}").text
            assert (store / "artifacts" / f"{h2}.so").exists()
            assert list((store / "builders").glob("*.json")), "the signer's key came along"
            started = time.perf_counter()
            refused = c.post(f"/modules/{name}/rollback", json={"module_hash": h1})
            assert 502 == refused.status_code, refused.text
            body = refused.json()
            assert "artifact_corrupt" == body["error"]
            assert f"artifact {h1[:12]} in the object store does not hash to its name" in body["message"]
            assert time.perf_counter() - started < 30
            assert not (store / "artifacts" / f"{h1}.so").exists()
            assert not [p for p in (store / "artifacts").iterdir() if p.name.startswith(".tmp")]
            assert "version two" == c.get(f"/{name}").text
            assert h2 == c.get(f"/modules/{name}").json()["module_hash"]
        assert "fetched artifact" in b.logs() and "refused artifact" in b.logs()
    finally:
        b.stop()


def test_remote_builder_writes_to_s3_and_the_api_reads_through_it(tmp_path: Path, s3_endpoint: S3Target) -> None:
    """`python -m builder` with its own store and the api with another: the
    builder writes to S3, the api finds manifests, sources, the action cache
    and the artifact there, never on the builder's disk."""
    service = BuilderService(tmp_path / "builder" / "store", env=s3_endpoint.env()).start()
    api = node(tmp_path, "api", s3_endpoint, CWEB_BUILDER_URL=service.url)
    try:
        health = httpx.get(service.url + "/healthz", timeout=10).json()
        assert f"{s3_endpoint.endpoint}/{s3_endpoint.bucket}" == health["object_store"]
        assert f"builders/{health['key_id']}.json" in bucket_keys(s3_endpoint)
        api.start()
        name = unique("s3r")
        source = route_module(name, f"/{name}", "from the builder")
        first = api.deploy(source, "remote.c")
        assert 200 == first.status_code, first.text
        module_hash = first.json()["module_hash"]
        assert first.json()["cache_hit"] is False
        api_store = tmp_path / "api" / "store"
        assert (api_store / "artifacts" / f"{module_hash}.so").exists()
        assert (tmp_path / "builder" / "store" / "artifacts" / f"{module_hash}.so").exists()
        with api.client() as c:
            assert "from the builder" == c.get(f"/{name}").text
            art = c.get(f"/artifacts/{module_hash}").json()
            assert art["provenance"]["verified"] is True, art["provenance"]
            assert source.encode() == c.get(f"/artifacts/{module_hash}/source").content
        # The same source again: the api's own action-cache lookup through S3 answers it.
        again = api.deploy(source, "remote.c")
        assert 200 == again.status_code, again.text
        assert again.json()["cache_hit"] is True
        assert (api_store / "actions").iterdir().__next__().name.endswith(".json")
        # A builder serves an artifact its own disk lost (or never had) from S3, verified.
        built = tmp_path / "builder" / "store" / "artifacts"
        expected = (built / f"{module_hash}.so").read_bytes()
        (built / f"{module_hash}.so").unlink()
        (built / f"{module_hash}.json").unlink()
        got = httpx.get(f"{service.url}/artifacts/{module_hash}", timeout=30)
        assert (200, expected) == (got.status_code, got.content)
        assert module_hash == httpx.get(f"{service.url}/artifacts/{module_hash}/manifest", timeout=30).json()["module_hash"]
        missing = httpx.get(f"{service.url}/artifacts/{'0' * 64}", timeout=30)
        assert (404, "artifact_not_found") == (missing.status_code, missing.json()["error"])
    finally:
        api.stop()
        service.stop()


def test_the_image_refuses_anonymous_access_and_starting_without_credentials(s3_endpoint: S3Target) -> None:
    """cweb-s3 answers only signed requests, and will not start open."""
    import docker

    s3_endpoint.client().create_bucket(Bucket=s3_endpoint.bucket)
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key="artifacts/x.so", Body=b"secret-ish")
    for method, path in (("GET", "/"), ("PUT", f"/{s3_endpoint.bucket}-anon"), ("GET", f"/{s3_endpoint.bucket}/artifacts/x.so"),
                         ("PUT", f"/{s3_endpoint.bucket}/artifacts/y.so")):
        r = httpx.request(method, s3_endpoint.endpoint + path, content=b"x" if method == "PUT" else None, timeout=10)
        assert 403 == r.status_code, (method, path, r.status_code, r.text[:200])
        assert b"secret-ish" not in r.content
    client = docker.from_env()
    try:
        container = client.containers.run(IMAGE, detach=True)
        try:
            status = container.wait(timeout=60)
            logs = container.logs().decode()
        finally:
            container.remove(force=True)
        assert 0 != status["StatusCode"]
        assert "set CWEB_S3_ACCESS_KEY and CWEB_S3_SECRET_KEY" in logs
    finally:
        client.close()


def test_cluster_of_nodes_with_postgres_and_s3_and_no_shared_disk(tmp_path: Path, postgres_url: str, s3_endpoint: S3Target) -> None:
    """The cluster's shape: nodes share PostgreSQL and the bucket, no directory.
    A deploy on node 1 loads on node 2 from S3 (fetched before its agent
    loads it); a node that starts later, with an empty store, catches up
    from the registry and S3 before it reports healthy."""
    key = "s3-cluster-key"
    auth = {"authorization": f"Bearer {key}"}

    def cluster_node(i: int) -> Server:
        return node(tmp_path, f"node{i}", s3_endpoint, CWEB_DATABASE_URL=postgres_url, CWEB_API_KEY=key,
                    CWEB_NODE_ID=f"node-{i}", CWEB_NODE_HEARTBEAT_S="0.5", CWEB_NODE_TTL_S="5")

    started: list[Server] = []
    try:
        a = cluster_node(1).start()
        started.append(a)
        b = cluster_node(2).start()
        started.append(b)
        name = unique("s3c")
        with a.client(headers=auth) as c:
            r = c.post("/mgnt", files={"code": ("c.c", route_module(name, f"/{name}", "everywhere").encode(), "text/x-c")})
        assert 200 == r.status_code, r.text
        module_hash = r.json()["module_hash"]
        assert {"node-1": "swapped", "node-2": "swapped"} == {n["node"]: n["outcome"] for n in r.json()["nodes"]}
        for s in (a, b):
            with s.client() as c:
                assert "everywhere" == c.get(f"/{name}").text
        assert (tmp_path / "node2" / "store" / "artifacts" / f"{module_hash}.so").exists()
        assert "fetched artifact" in b.logs()
        late = cluster_node(3).start()
        started.append(late)
        assert (tmp_path / "node3" / "store" / "artifacts" / f"{module_hash}.so").exists()
        with late.client() as c:
            answer = c.get(f"/{name}")
        assert ("everywhere", "node-3") == (answer.text, answer.headers["x-cweb-node"])
    finally:
        for s in started:
            s.stop()


def test_an_unreachable_object_store_is_a_503_json_answer(tmp_path: Path) -> None:
    """S3 down: a deploy answers 503 object_store_unavailable at once, nothing
    is recorded in the action cache, and the server keeps serving."""
    from tests.conftest import free_port

    down = S3Target(f"http://127.0.0.1:{free_port()}", "cweb")
    s = node(tmp_path, "down", down).start()
    try:
        name = unique("s3d")
        started = time.perf_counter()
        r = s.deploy(route_module(name, f"/{name}", "never"), "down.c")
        assert 503 == r.status_code, r.text
        body = r.json()
        assert "object_store_unavailable" == body["error"]
        assert down.endpoint in body["message"]
        assert time.perf_counter() - started < 60
        assert [] == list((tmp_path / "down" / "store" / "actions").iterdir())
        with s.client() as c:
            assert 200 == c.get("/healthz").status_code
            assert 404 == c.get(f"/{name}").status_code
    finally:
        s.stop()
