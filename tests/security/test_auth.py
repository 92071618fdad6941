"""Who may deploy: API keys on the control plane, refusal to start exposed
without one."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from api import auth
from api.settings import Settings
from tests.conftest import ROOT, free_port, route_module, unique
from tests.security.conftest import API_KEY, OLD_KEY, SENTINEL_PATH, SecServer

# ---- the guard on its own -------------------------------------------------


def _scope(method: str, path: str, headers: list | None = None, query: bytes = b"") -> dict:
    return {"type": "http", "method": method, "path": path, "headers": headers or [], "query_string": query}


GUARD = auth.make_guard(Settings(api_keys=["k-one", "k-two"]))
PROTECTED = [
    ("POST", "/mgnt"),
    ("DELETE", "/modules/counter"),
    ("POST", "/modules/counter/rollback"),
    ("GET", "/artifacts/abc123/source"),
    ("GET", "/artifacts/abc123"),
    ("GET", "/modules/counter/logs"),
    ("GET", "/_cweb/builds"),
    ("GET", "/_cweb/workers"),
    ("GET", "/_cweb/history"),
    ("GET", "/_cweb/events"),
    ("GET", "/_cweb/anything-added-later"),
    ("GET", "/builds"),
    ("GET", "/builds/3f2a9c1d0b7e4a55"),
    ("GET", "/builds/3f2a9c1d0b7e4a55/log"),
    ("POST", "/jobs"),
    ("POST", "/jobs/1b9d6bcd/cancel"),
    ("GET", "/jobs"),
    ("GET", "/jobs/1b9d6bcd"),
    ("GET", "/jobs/1b9d6bcd/events"),
    ("GET", "/jobs/ws"),
]
PUBLIC = [("GET", "/modules"), ("GET", "/modules/counter"), ("GET", "/healthz"), ("GET", "/docs"),
          ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/ui"), ("GET", "/modules/counter/versions"), ("GET", "/modules/logs")]


def test_no_guard_without_keys() -> None:
    assert auth.make_guard(Settings(api_keys=[])) is None


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_guard_refuses_protected_endpoints_without_a_key(method: str, path: str) -> None:
    assert GUARD is not None
    refused = GUARD(_scope(method, path))
    assert refused is not None
    status, body, headers = refused
    assert status == 401
    assert b'"error":"unauthorized"' in body
    assert (b"www-authenticate", b'Bearer realm="cweb"') in headers


@pytest.mark.parametrize(("method", "path"), PUBLIC)
def test_guard_lets_reads_through(method: str, path: str) -> None:
    assert GUARD is not None
    assert GUARD(_scope(method, path)) is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer k-one")],
        [(b"authorization", b"bearer k-two")],
        [(b"x-api-key", b"k-two")],
        [(b"x-api-key", b"wrong"), (b"authorization", b"Bearer k-one")],
    ],
)
def test_guard_accepts_every_configured_key_in_both_forms(headers: list) -> None:
    assert GUARD is not None
    assert GUARD(_scope("POST", "/mgnt", headers)) is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer k-on")],
        [(b"authorization", b"Basic k-one")],
        [(b"authorization", b"k-one")],
        [(b"x-api-key", b"k-one-and-more")],
        [(b"x-api-key", b"")],
    ],
)
def test_guard_refuses_wrong_keys(headers: list) -> None:
    assert GUARD is not None
    assert GUARD(_scope("POST", "/mgnt", headers)) is not None


def test_guard_never_reads_the_query_string() -> None:
    assert GUARD is not None
    refused = GUARD(_scope("POST", "/mgnt", query=b"api_key=k-one"))
    assert refused is not None and b"query string" in refused[1]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.0.2.1", False), ("example.org", False), ("", False)],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert auth.is_loopback(host) is loopback


def test_startup_refusal_rules() -> None:
    assert auth.startup_problem(Settings(host="127.0.0.1")) is None
    assert auth.startup_problem(Settings(host="0.0.0.0", api_keys=["k"])) is None
    assert auth.startup_problem(Settings(host="0.0.0.0", insecure_no_auth=True)) is None
    problem = auth.startup_problem(Settings(host="0.0.0.0"))
    assert problem and "CWEB_API_KEY" in problem and "--insecure-no-auth" in problem


def test_server_refuses_to_start_exposed_without_a_key(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "api", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode != 0
    assert "CWEB_API_KEY" in proc.stderr and "--insecure-no-auth" in proc.stderr
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "d").exists(), "nothing may be created before the refusal"


# ---- against the real server ------------------------------------------------


def test_deploy_without_wrong_and_right_key(healthy: SecServer) -> None:
    src = route_module(unique("authmod"), f"/{unique('auth')}", "authed")
    none = healthy.deploy(src, headers={})
    assert none.status_code == 401
    assert none.headers["www-authenticate"].startswith("Bearer")
    assert none.json()["error"] == "unauthorized"
    wrong = healthy.deploy(src, headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
    wrong_x = healthy.deploy(src, headers={"X-API-Key": API_KEY[:-1]})
    assert wrong_x.status_code == 401
    query = healthy.deploy(src, headers={}, params={"api_key": API_KEY})
    assert query.status_code == 401 and "query string" in query.json()["message"]
    bearer = healthy.deploy(src, headers={"Authorization": f"Bearer {API_KEY}"})
    assert bearer.status_code == 200, bearer.text
    x_key = healthy.deploy(src, headers={"X-API-Key": OLD_KEY})  # the key being rotated out still works
    assert x_key.status_code == 200, x_key.text
    assert x_key.json()["module_hash"] == bearer.json()["module_hash"]


def test_management_and_job_control_need_the_key(healthy: SecServer) -> None:
    with healthy.client() as c:
        for method, path in PROTECTED:
            r = c.request(method, path.replace("counter", "sentinel"), json={"module": "x", "job": "y", "payload": {}})
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.json()["error"] == "unauthorized"
        # Reads and module routes stay public.
        assert c.get("/modules").status_code == 200
        assert c.get(SENTINEL_PATH).status_code == 200


def test_removal_with_the_key(healthy: SecServer) -> None:
    name = unique("removable")
    path = f"/{unique('rm')}"
    assert healthy.deploy(route_module(name, path, "x")).status_code == 200
    with healthy.client() as c:
        assert c.delete(f"/modules/{name}").status_code == 401
        assert c.get(path).status_code == 200
        r = c.delete(f"/modules/{name}", headers={"X-API-Key": API_KEY})
        assert r.status_code == 200, r.text
        assert c.get(path).status_code == 404


def test_the_key_is_never_logged(healthy: SecServer) -> None:
    healthy.deploy("int broken(", headers={"Authorization": f"Bearer {API_KEY}"})
    healthy.deploy("int broken(", headers={"Authorization": "Bearer wrong-key-value"})
    logs = healthy.logs()
    assert API_KEY not in logs and OLD_KEY not in logs and "wrong-key-value" not in logs


def test_private_reads_answer_with_the_key_and_public_ones_without(healthy: SecServer) -> None:
    """Module output, builds, workers and artifacts need the key and answer
    with it; module routes, docs, the schema, health and metrics need none."""
    name = unique("private")
    path = f"/{unique('priv')}"
    r = healthy.deploy(route_module(name, path, "x"))
    assert r.status_code == 200, r.text
    module_hash = r.json()["module_hash"]
    private = [f"/modules/{name}/logs", "/_cweb/builds", "/_cweb/workers", "/_cweb/history", f"/artifacts/{module_hash}",
               f"/artifacts/{module_hash}/source"]
    with healthy.client() as c:
        for p in private:
            refused = c.get(p)
            assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized"), p
            assert name not in refused.text and module_hash not in refused.text
            granted = c.get(p, headers={"X-API-Key": API_KEY})
            assert granted.status_code == 200, (p, granted.text)
        assert c.get(f"/artifacts/{module_hash}/source", headers={"X-API-Key": API_KEY}).text.count(name) == 1
        # The live feed: refused without the key; with it, a stream that starts with `hello`.
        assert 401 == c.get("/_cweb/events").status_code
        with c.stream("GET", "/_cweb/events", headers={"X-API-Key": API_KEY}) as feed:
            assert (200, "event: hello") == (feed.status_code, next(feed.iter_lines()))
        for p in (path, "/docs", "/openapi.json", "/healthz", "/metrics", "/modules", "/ui"):
            assert c.get(p).status_code == 200, p


@pytest.mark.parametrize("query", ["tail=18446744073709551616", "tail=-1", "tail=x", "tail=10001", "follow=99999999999999999999999"])
def test_out_of_range_query_numbers_are_400_json(healthy: SecServer, query: str) -> None:
    """A number a parameter cannot take is a 400 naming it, never a 500."""
    with healthy.client() as c:
        r = c.get(f"/modules/nope/logs?{query}", headers={"X-API-Key": API_KEY})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_parameter"
        assert query.split("=")[0] in r.json()["message"]
