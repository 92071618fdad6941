"""CORS on module routes, as c-web-modules answers it: every module answer
carries Access-Control-Allow-Origin, OPTIONS is answered by the server with
the allow headers; the control plane has no CORS; origins are a setting."""

from __future__ import annotations

import httpx

from tests.conftest import Server, module, route_module, unique

SET_OWN = r"""
static int own(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    http_kv_insert(res->headers, "Access-Control-Allow-Origin", strdup("https://mine.example"));
    snprintf(res->body, HTTP_RESPONSE_SIZE, "own");
    res->status = HTTP_200_OK;
    return 0;
}
static int opt(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "module options");
    res->status = HTTP_200_OK;
    return 0;
}
"""


def test_module_answers_carry_allow_origin_by_default(server: Server) -> None:
    """Default "*": 200s, 404s and 405s on module paths all say any origin may read them."""
    path = f"/{unique('cors')}"
    assert server.deploy(route_module(unique("cors"), path, "hi")).status_code == 200
    with server.client() as c:
        r = c.get(path, headers={"Origin": "https://app.example"})
        assert (r.status_code, r.text, r.headers.get("access-control-allow-origin")) == (200, "hi", "*")
        r = c.get(path)  # no Origin: still there, as the original
        assert r.headers.get("access-control-allow-origin") == "*"
        r = c.post(path)
        assert (r.status_code, r.headers.get("access-control-allow-origin")) == (405, "*")
        r = c.get(f"/{unique('nothing')}")
        assert (r.status_code, r.headers.get("access-control-allow-origin")) == (404, "*")


def test_preflight_on_a_module_path_is_answered_by_the_server(server: Server) -> None:
    """A browser preflight gets 200, an empty body and the original's allow headers."""
    path = f"/{unique('pre')}"
    assert server.deploy(route_module(unique("pre"), path, "x", method="POST")).status_code == 200
    with server.client() as c:
        r = c.options(path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                     "Access-Control-Request-Headers": "content-type"})
        assert r.status_code == 200 and r.content == b""
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.headers["access-control-allow-methods"] == "GET, POST, PUT, DELETE, OPTIONS"
        assert r.headers["access-control-allow-headers"] == "Content-Type, Authorization"
        assert r.headers["access-control-max-age"] == "600"
        # A path no module serves: the original answers every OPTIONS 200 too.
        r = c.options(f"/{unique('none')}", headers={"Access-Control-Request-Method": "GET"})
        assert r.status_code == 200 and r.headers["access-control-allow-methods"]


def test_module_headers_win_and_module_options_routes_still_run(server: Server) -> None:
    """A module that sets its own Allow-Origin keeps it; a plain OPTIONS (no
    preflight) reaches a module's OPTIONS route; a preflight does not."""
    prefix = f"/{unique('own')}"
    src = module(unique("own"), [(prefix + "/a", "GET", "own"), (prefix + "/o", "OPTIONS", "opt")], SET_OWN)
    assert server.deploy(src).status_code == 200, server.deploy(src).text
    with server.client() as c:
        r = c.get(prefix + "/a", headers={"Origin": "https://other.example"})
        assert r.headers.get_list("access-control-allow-origin") == ["https://mine.example"]
        r = c.options(prefix + "/o")
        assert (r.status_code, r.text, r.headers["access-control-allow-origin"]) == (200, "module options", "*")
        r = c.options(prefix + "/o", headers={"Access-Control-Request-Method": "GET", "Origin": "https://x.example"})
        assert (r.status_code, r.content) == (200, b"")
        assert "access-control-allow-methods" in r.headers


def test_control_plane_has_no_cors(server: Server) -> None:
    """Deploys, listings and health keep their own rules: no CORS headers."""
    with server.client() as c:
        for r in (c.get("/healthz", headers={"Origin": "https://evil.example"}),
                  c.get("/modules", headers={"Origin": "https://evil.example"}),
                  c.options("/mgnt", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})):
            assert "access-control-allow-origin" not in r.headers, (r.request.url, r.headers)


def test_origins_are_configurable(make_server) -> None:
    """CWEB_CORS_ORIGINS as a list echoes listed origins (Vary: Origin) and
    says nothing to others; empty turns CORS off (OPTIONS reaches routing)."""
    s = make_server(env={"CWEB_CORS_ORIGINS": "https://a.example, https://b.example", "CWEB_CORS_MAX_AGE": "30"})
    path = f"/{unique('lst')}"
    assert s.deploy(route_module(unique("lst"), path, "hi")).status_code == 200
    with s.client() as c:
        r = c.get(path, headers={"Origin": "https://b.example"})
        assert (r.headers.get("access-control-allow-origin"), r.headers.get("vary")) == ("https://b.example", "Origin")
        r = c.get(path, headers={"Origin": "https://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = c.options(path, headers={"Origin": "https://a.example", "Access-Control-Request-Method": "GET"})
        assert (r.status_code, r.headers["access-control-allow-origin"], r.headers["access-control-max-age"]) == (200, "https://a.example", "30")
    s.stop()
    off = Server(s.data_dir, env={"CWEB_CORS_ORIGINS": ""}).start()
    try:
        with off.client() as c:
            r = c.get(path, headers={"Origin": "https://a.example"})
            assert r.text == "hi" and "access-control-allow-origin" not in r.headers
            r = c.options(path, headers={"Origin": "https://a.example", "Access-Control-Request-Method": "GET"})
            assert r.status_code == 405
    finally:
        off.stop()


def test_httpx_sees_cors_on_the_fast_path_under_keep_alive(server: Server) -> None:
    """Many answers on one connection: every one carries the header (the
    cached per-header-set rendering includes it)."""
    path = f"/{unique('ka')}"
    assert server.deploy(route_module(unique("ka"), path, "k")).status_code == 200
    with httpx.Client(base_url=server.url) as c:
        assert {c.get(path).headers.get("access-control-allow-origin") for _ in range(50)} == {"*"}
