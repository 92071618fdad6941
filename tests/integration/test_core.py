"""The core of cweb against a real server: deploy, serve, reject, swap, persist.

Every test talks HTTP to a real `python -m api` subprocess (the session
`server`, or its own from `make_server` where it needs a restart or other
settings), which compiles real C with gcc and runs it in real worker
processes. The session server is shared, so every module name and route path
is made unique with `unique()`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from builder import compile as compile_mod
from tests.conftest import HANDLER, Server, module, route_module, unique, wait_for


def body_handler(fn: str, body: str, usleep_ms: int = 0) -> str:
    """A handler answering the constant `body`, after sleeping usleep_ms."""
    sleep = f"usleep({usleep_ms} * 1000);" if usleep_ms else ""
    return f"""
{HANDLER.format(fn=fn)} {{
    (void)ctx; (void)req;
    {sleep}
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", "{body}");
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    res->status = HTTP_200_OK;
    return 0;
}}
"""


def deployed(server: Server, source: str, filename: str = "module.c") -> dict:
    """Deploy and insist it worked; returns the response JSON."""
    r = server.deploy(source, filename)
    assert 200 == r.status_code, r.text
    return r.json()


def get(server: Server, path: str, **kw: object) -> httpx.Response:
    with server.client() as c:
        return c.get(path, **kw)  # type: ignore[arg-type]


def answer(server: Server, path: str) -> tuple[int, str]:
    r = get(server, path)
    return r.status_code, r.text


def c_string(text: str) -> str:
    """A C string literal holding text (JSON escapes are valid C escapes for these)."""
    return json.dumps(text)


# ---------------------------------------------------------------------------
# serving


ECHO_CODE = r"""
static const char *or_none(const char *s) { return s ? s : "(none)"; }

static int query(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "x=%s y=%s",
             or_none(http_kv_get(req->params, "x")), or_none(http_kv_get(req->params, "y")));
    res->status = HTTP_200_OK;
    return 0;
}

static int header(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s|%s",
             or_none(http_kv_get(req->headers, "X-Cweb-Test")), or_none(http_kv_get(req->headers, "x-cweb-test")));
    res->status = HTTP_200_OK;
    return 0;
}

static int body(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s %d:%s", req->method_name, req->content_length, req->body);
    res->status = HTTP_200_OK;
    return 0;
}

static int form(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "a=%s b=%s upload=%s",
             or_none(http_kv_get(req->data, "a")), or_none(http_kv_get(req->data, "b")),
             or_none(http_kv_get(req->data, "upload")));
    res->status = HTTP_200_OK;
    return 0;
}
"""


@pytest.fixture(scope="module")
def echo(server: Server) -> Iterator[str]:
    """An echo module on the session server; yields its path prefix."""
    name = unique("echo")
    base = f"/{name}"
    routes = [
        (f"{base}/query", "GET", "query"),
        (f"{base}/header", "GET", "header"),
        (f"{base}/body", "POST", "body"),
        (f"{base}/body", "PUT", "body"),
        (f"{base}/form", "POST", "form"),
    ]
    deployed(server, module(name, routes, ECHO_CODE))
    yield base


def test_healthz_answers_200(server: Server) -> None:
    """GET /healthz is 200 with status ok."""
    r = get(server, "/healthz")
    assert (200, "ok") == (r.status_code, r.json()["status"])


def test_deploy_response_describes_the_module(server: Server) -> None:
    """POST /mgnt answers the name, author, hashes, build key, declarations and cache/timing facts."""
    name = unique("resp")
    source = route_module(name, f"/{name}", "hi")
    body = deployed(server, source, f"{name}.c")
    assert name == body["name"]
    assert "tests" == body["author"]
    assert hashlib.sha256(source.encode()).hexdigest() == body["source_sha256"]
    assert 64 == len(body["module_hash"]) and 64 == len(body["build_key"])
    assert [{"method": "GET", "path": f"/{name}"}] == body["routes"]
    assert ([], []) == (body["websockets"], body["jobs"])
    assert False is body["cache_hit"]
    assert isinstance(body["build_ms"], (int, float)) and body["build_ms"] > 0


def test_module_route_answers(server: Server) -> None:
    """After a deploy the module's route answers its handler's body and headers."""
    name = unique("hello")
    deployed(server, route_module(name, f"/{name}", "hello world"))
    r = get(server, f"/{name}")
    assert (200, "hello world", "text/plain") == (r.status_code, r.text, r.headers["content-type"])


def test_query_params_reach_req_params(server: Server, echo: str) -> None:
    """?x=..&y=.. arrive url-decoded in req->params."""
    assert (200, "x=hello world y=a&b") == answer(server, f"{echo}/query?x=hello%20world&y=a%26b")
    assert (200, "x=1 y=(none)") == answer(server, f"{echo}/query?x=1")


def test_headers_reach_req_headers_case_insensitively(server: Server, echo: str) -> None:
    """A header sent as X-CWEB-TEST is found by any spelling of its name."""
    r = get(server, f"{echo}/header", headers={"X-CWEB-TEST": "yes"})
    assert (200, "yes|yes") == (r.status_code, r.text)


def test_post_body_and_content_length(server: Server, echo: str) -> None:
    """A POST body reaches req->body with req->content_length; PUT as well."""
    with server.client() as c:
        post = c.post(f"{echo}/body", content=b"some body")
        put = c.put(f"{echo}/body", content=b"0123456789")
    assert (200, "POST 9:some body") == (post.status_code, post.text)
    assert (200, "PUT 10:0123456789") == (put.status_code, put.text)


def test_urlencoded_form_reaches_req_data(server: Server, echo: str) -> None:
    """application/x-www-form-urlencoded fields are parsed into req->data."""
    with server.client() as c:
        r = c.post(f"{echo}/form", data={"a": "one two", "b": "x&y"})
    assert (200, "a=one two b=x&y upload=(none)") == (r.status_code, r.text)


def test_multipart_form_reaches_req_data(server: Server, echo: str) -> None:
    """multipart/form-data fields and file parts are parsed into req->data."""
    with server.client() as c:
        r = c.post(f"{echo}/form", data={"a": "1"}, files={"upload": ("f.txt", b"file-content", "text/plain")})
    assert (200, "a=1 b=(none) upload=file-content") == (r.status_code, r.text)


@pytest.mark.parametrize("method", ["DELETE", "HEAD", "POST", "PATCH"])
def test_other_method_on_a_route_is_405_with_allow(server: Server, echo: str, method: str) -> None:
    """A known path with a method it does not declare is 405 with an Allow header."""
    with server.client() as c:
        r = c.request(method, f"{echo}/query")
    assert (405, "GET") == (r.status_code, r.headers.get("allow"))
    if method != "HEAD":
        assert "method_not_allowed" == r.json()["error"]


def test_allow_lists_every_method_of_the_path(server: Server, echo: str) -> None:
    """Allow names all the methods the path has."""
    with server.client() as c:
        r = c.get(f"{echo}/body")
    assert 405 == r.status_code
    assert ["POST", "PUT"] == sorted(m.strip() for m in r.headers["allow"].split(","))


def test_unknown_path_is_404_json(server: Server) -> None:
    """A path no module serves is a JSON 404."""
    r = get(server, f"/{unique('nothing')}/here")
    assert (404, "application/json", "not_found") == (r.status_code, r.headers["content-type"], r.json()["error"])


def test_regex_route_full_match(server: Server) -> None:
    """'/items/[0-9]+' serves '/items/42' and is 404 for '/items/x' and '/items/42x'."""
    name = unique("items")
    deployed(server, route_module(name, f"/{name}/[0-9]+", "an item"))
    assert (200, "an item") == answer(server, f"/{name}/42")
    assert (404, 404) == (get(server, f"/{name}/x").status_code, get(server, f"/{name}/42x").status_code)


def test_path_merely_starting_with_a_reserved_word_is_served(server: Server) -> None:
    """'/docsearch-…' is not under '/docs': the deploy accepts it, so the module must serve it."""
    name = unique("m")
    path = f"/docsearch-{name}"
    deployed(server, route_module(name, path, "searching"))
    assert (200, "searching") == answer(server, path)


# ---------------------------------------------------------------------------
# /modules


def test_list_get_and_delete_modules(server: Server) -> None:
    """GET /modules lists it, GET /modules/{name} describes it, DELETE removes its routes."""
    name = unique("listed")
    info = deployed(server, route_module(name, f"/{name}", "listed"))
    listing = {m["name"]: m for m in get(server, "/modules").json()["modules"]}
    assert info["module_hash"] == listing[name]["module_hash"]
    one = get(server, f"/modules/{name}")
    assert (200, name, info["module_hash"], [{"method": "GET", "path": f"/{name}"}]) == (
        one.status_code,
        one.json()["name"],
        one.json()["module_hash"],
        one.json()["routes"],
    )
    with server.client() as c:
        gone = c.delete(f"/modules/{name}")
    # With several nodes (docs/CLUSTER.md) the answer also lists what each node did.
    assert (200, name, True) == (gone.status_code, gone.json()["name"], gone.json()["removed"])
    assert 404 == get(server, f"/{name}").status_code
    assert name not in {m["name"] for m in get(server, "/modules").json()["modules"]}
    after = get(server, f"/modules/{name}")
    assert (404, "module_not_found") == (after.status_code, after.json()["error"])


def test_unknown_module_is_404_json(server: Server) -> None:
    """GET and DELETE of a module that does not exist are JSON 404s."""
    name = unique("ghost")
    with server.client() as c:
        r1 = c.get(f"/modules/{name}")
        r2 = c.delete(f"/modules/{name}")
    assert (404, "module_not_found") == (r1.status_code, r1.json()["error"])
    assert (404, "module_not_found") == (r2.status_code, r2.json()["error"])


# ---------------------------------------------------------------------------
# cache and reproducibility


def test_redeploying_identical_source_is_a_noop_cache_hit(server: Server) -> None:
    """The same source again: cache hit, no-op, same module hash."""
    name = unique("same")
    source = route_module(name, f"/{name}", "same")
    first = deployed(server, source)
    second = deployed(server, source)
    assert (False, False) == (first["cache_hit"], first["noop"])
    assert (True, True, first["module_hash"]) == (second["cache_hit"], second["noop"], second["module_hash"])
    assert (200, "same") == answer(server, f"/{name}")


def test_returning_to_an_earlier_source_is_a_cache_hit(server: Server) -> None:
    """A, then B, then A again: the third deploy compiles nothing, activates A and serves A's body."""
    name = unique("aba")
    a = route_module(name, f"/{name}", "body A")
    b = route_module(name, f"/{name}", "body B")
    first = deployed(server, a)
    deployed(server, b)
    assert (200, "body B") == answer(server, f"/{name}")
    again = deployed(server, a)
    assert (True, False, first["module_hash"]) == (again["cache_hit"], again["noop"], again["module_hash"])
    assert (200, "body A") == answer(server, f"/{name}")


def test_builds_are_reproducible_across_servers(make_server, tmp_path: Path) -> None:
    """Two servers with separate fresh stores build one source to the same module_hash."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = make_server(tmp_path / "one" / "data")
    two = make_server(tmp_path / "two" / "data")
    name = unique("repro")
    source = route_module(name, f"/{name}", "reproducible")
    r1 = deployed(one, source)
    r2 = deployed(two, source)
    assert (False, False) == (r1["cache_hit"], r2["cache_hit"])
    assert r1["build_key"] == r2["build_key"]
    assert r1["module_hash"] == r2["module_hash"]


# ---------------------------------------------------------------------------
# compile errors

BROKEN = """#include <cweb.h>
static int handler(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    int x = ;
    return 0;
}
"""


def assert_no_server_paths(server: Server, text: str) -> None:
    for leak in (str(server.data_dir), str(server.data_dir.parent), compile_mod.SDK_DIR, "/build/", "/tmp/", "cweb-build-"):
        assert leak not in text, f"response leaks {leak!r}: {text}"


def test_compile_error_is_422_with_diagnostics(server: Server) -> None:
    """A syntax error is 422 compile_failed with file (the upload's name), line, column, severity and the log."""
    keep = unique("keep")
    deployed(server, route_module(keep, f"/{keep}", "still here"))
    r = server.deploy(BROKEN, "broken.c")
    assert (422, "compile_failed") == (r.status_code, r.json()["error"])
    body = r.json()
    column = BROKEN.splitlines()[2].index(";") + 1
    first = body["diagnostics"][0]
    assert ("broken.c", 3, column, "error") == (first["file"], first["line"], first["column"], first["severity"])
    assert "expected expression" in first["message"]
    assert f"broken.c:3:{column}: error" in body["log"]
    assert_no_server_paths(server, r.text)
    assert (200, "still here") == answer(server, f"/{keep}")


def test_link_error_is_422_naming_the_missing_symbol(server: Server) -> None:
    """An undefined function is 422 compile_failed whose one error is the undefined reference, with no sandbox paths."""
    name = unique("linky")
    extra = "void not_defined_anywhere(void);\n__attribute__((used)) static void call_it(void) { not_defined_anywhere(); }"
    r = server.deploy(route_module(name, f"/{name}", "x", extra=extra), "linky.c")
    assert (422, "compile_failed") == (r.status_code, r.json()["error"])
    errors = [d for d in r.json()["diagnostics"] if d["severity"] == "error"]
    assert [("linky.c", "undefined reference to `not_defined_anywhere'")] == [(d["file"], d["message"]) for d in errors]
    assert "not_defined_anywhere" in r.json()["message"]
    assert_no_server_paths(server, r.text)


# ---------------------------------------------------------------------------
# rejections leave the previous version serving

SEGFAULT = "static void boom(struct cweb_context *c) { (void)c; *(volatile int *)0 = 1; }"

# (case, C of the rejected version given name/path, status, error code)
BAD_VERSIONS = [
    (
        "reserved prefix",
        lambda n, p: module(n, [(p, "GET", "h"), ("/jobs/mine", "GET", "h")], body_handler("h", "bad")),
        422,
        "reserved_path",
    ),
    (
        "regex matching a reserved path",
        lambda n, p: module(n, [(p, "GET", "h"), ("/.*", "GET", "h")], body_handler("h", "bad")),
        422,
        "reserved_path",
    ),
    (
        "invalid regex",
        lambda n, p: module(n, [(p, "GET", "h"), (p + "/[0-9", "GET", "h")], body_handler("h", "bad")),
        422,
        "invalid_regex",
    ),
    (
        "size above MAX_ROUTES",
        lambda n, p: module(n, [(p, "GET", "h")], body_handler("h", "bad")).replace(".size = 1", ".size = MAX_ROUTES + 1"),
        422,
        "invalid_module",
    ),
    (
        "NULL handler",
        lambda n, p: module(n, [(p, "GET", "h"), (p + "/null", "GET", "NULL")], body_handler("h", "bad")),
        422,
        "invalid_module",
    ),
    (
        "duplicate route",
        lambda n, p: module(n, [(p, "GET", "h"), (p, "GET", "h")], body_handler("h", "bad")),
        422,
        "duplicate_route",
    ),
    (
        "onload segfaults",
        lambda n, p: module(n, [(p, "GET", "h")], body_handler("h", "bad") + SEGFAULT, ".onload = boom,"),
        422,
        "onload_crashed",
    ),
    (
        "missing config symbol",
        lambda n, p: "#include <cweb.h>\n" + body_handler("h", "bad") + "int not_config = 1;\n",
        422,
        "missing_config",
    ),
]


@pytest.mark.parametrize("case, bad, status, code", BAD_VERSIONS, ids=[b[0] for b in BAD_VERSIONS])
def test_rejected_deploy_keeps_previous_version(server: Server, case: str, bad, status: int, code: str) -> None:
    """A version that fails validation or onload is refused with a clear error; the old one keeps serving."""
    name = unique("keep")
    path = f"/{name}"
    v1 = deployed(server, route_module(name, path, "v1"))
    r = server.deploy(bad(name, path))
    assert (status, code) == (r.status_code, r.json()["error"]), r.text
    assert r.json()["message"]
    assert (200, "v1") == answer(server, path)
    assert v1["module_hash"] == get(server, f"/modules/{name}").json()["module_hash"]


def test_route_conflict_is_409_naming_the_owner(server: Server) -> None:
    """Claiming another module's route is 409 route_conflict naming the owner; both modules keep serving."""
    owner = unique("owner")
    taker = unique("taker")
    shared = f"/{owner}/shared"
    deployed(server, route_module(owner, shared, "owner's"))
    deployed(server, route_module(taker, f"/{taker}", "taker v1"))
    bad = module(taker, [(f"/{taker}", "GET", "h"), (shared, "GET", "h")], body_handler("h", "taker v2"))
    r = server.deploy(bad)
    assert (409, "route_conflict", owner) == (r.status_code, r.json()["error"], r.json().get("owner"))
    assert owner in r.json()["message"]
    assert (200, "owner's") == answer(server, shared)
    assert (200, "taker v1") == answer(server, f"/{taker}")


@pytest.fixture(scope="module")
def sentinel(server: Server) -> str:
    """A module whose route must survive every bad upload."""
    name = unique("sentinel")
    deployed(server, route_module(name, f"/{name}", "sentinel"))
    return f"/{name}"


def test_non_multipart_upload_is_400(server: Server, sentinel: str) -> None:
    """A raw (non-multipart) POST /mgnt is a JSON 400."""
    with server.client() as c:
        r = c.post("/mgnt", content=b"int x;\n", headers={"content-type": "text/x-c"})
    assert (400, "application/json", "not_multipart") == (r.status_code, r.headers["content-type"], r.json()["error"])
    assert (200, "sentinel") == answer(server, sentinel)


def test_missing_code_field_is_400(server: Server, sentinel: str) -> None:
    """A multipart upload without a `code` field is a JSON 400."""
    with server.client() as c:
        r = c.post("/mgnt", files={"source": ("m.c", b"int x;\n", "text/x-c")})
    assert (400, "missing_code") == (r.status_code, r.json()["error"])
    assert (200, "sentinel") == answer(server, sentinel)


def test_source_over_one_mib_is_413(server: Server, sentinel: str) -> None:
    """A source one byte over 1 MiB is refused with 413 before compiling."""
    big = b"/*" + b"x" * ((1 << 20) - 3) + b"*/"
    assert (1 << 20) + 1 == len(big)
    r = server.deploy(big, "big.c")
    assert (413, "source_too_large") == (r.status_code, r.json()["error"])
    assert (200, "sentinel") == answer(server, sentinel)


def test_binary_source_is_422(server: Server, sentinel: str) -> None:
    """A source holding NUL bytes is 422 bad_source."""
    r = server.deploy(b"\x7fELF\x02\x01\x01\x00\x00\x00int x;\n", "module.so")
    assert (422, "bad_source") == (r.status_code, r.json()["error"])
    assert (200, "sentinel") == answer(server, sentinel)


# ---------------------------------------------------------------------------
# hot swap


def test_hot_swap_under_load_drops_nothing(server: Server) -> None:
    """While 8 clients hammer a route, a redeploy swaps v1 for v2 with no failed request.

    Bodies are only v1 or v2, and every request that starts after the deploy
    has answered gets v2.
    """
    name = unique("swap")
    path = f"/{name}"
    deployed(server, route_module(name, path, "v1"))
    results: list[tuple[float, int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = c.get(path)
                    item = (started, r.status_code, r.text)
                except httpx.HTTPError as exc:
                    item = (started, -1, repr(exc))
                with lock:
                    results.append(item)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        r = server.deploy(route_module(name, path, "v2"))
        swapped_at = time.monotonic()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert 200 == r.status_code, r.text
    failures = [(s, b) for _, s, b in results if s != 200]
    assert [] == failures[:10]
    assert {"v1", "v2"} == {b for _, _, b in results}
    assert {"v2"} == {b for started, _, b in results if started > swapped_at}
    assert len(results) > 100


def test_in_flight_request_finishes_on_the_old_version(server: Server) -> None:
    """A slow v1 request that started before the swap completes with v1's body; new requests get v2."""
    name = unique("slow")
    path = f"/{name}"
    v1 = module(name, [(path, "GET", "h")], body_handler("h", "slow v1", usleep_ms=4000))
    v2 = module(name, [(path, "GET", "h")], body_handler("h", "fast v2"))
    deployed(server, v1)
    with server.client() as c:
        check = c.post("/mgnt", params={"check": 1}, files={"code": ("v2.c", v2.encode(), "text/x-c")})
    assert 200 == check.status_code, check.text
    slow: dict = {}

    def request() -> None:
        try:
            r = get(server, path)
            slow["answer"] = (r.status_code, r.text)
        except httpx.HTTPError as exc:
            slow["answer"] = (-1, repr(exc))

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.4)
    swap = server.deploy(v2)
    in_flight_at_swap = t.is_alive()
    after_swap = answer(server, path)
    t.join(30)
    assert 200 == swap.status_code, swap.text
    assert True is in_flight_at_swap
    assert (200, "fast v2") == after_swap
    assert (200, "slow v1") == slow["answer"]


def test_request_whose_body_spans_the_swap_is_served(server: Server) -> None:
    """A POST routed to v1 whose body is still arriving when v2 goes live is answered 200, not refused."""
    name = unique("span")
    path = f"/{name}"
    code = """
static int h(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s got %s", VERSION, req->body);
    res->status = HTTP_200_OK;
    return 0;
}
"""
    v1 = module(name, [(path, "POST", "h")], '#define VERSION "v1"\n' + code)
    v2 = module(name, [(path, "POST", "h")], '#define VERSION "v2"\n' + code)
    deployed(server, v1)
    swapped = threading.Event()
    result: dict = {}

    def chunks() -> Iterator[bytes]:
        yield b"first-"
        swapped.wait(30)
        yield b"second"

    def request() -> None:
        try:
            with server.client() as c:
                r = c.post(path, content=chunks())
            result["answer"] = (r.status_code, r.text)
        except httpx.HTTPError as exc:
            result["answer"] = (-1, repr(exc))

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.5)
    try:
        swap = server.deploy(v2)
    finally:
        swapped.set()
        t.join(30)
    assert 200 == swap.status_code, swap.text
    status, text = result["answer"]
    assert 200 == status, text
    assert text in ("v1 got first-second", "v2 got first-second")


def test_unload_runs_after_drain(server: Server) -> None:
    """The old version's unload runs once its in-flight request has finished, then soon after."""
    name = unique("unload")
    path = f"/{name}"
    # Workers cannot write host files (their sandbox): unload says so on stdout.
    unload = """
static void on_unload(struct cweb_context *ctx) {
    (void)ctx;
    printf("unloaded-marker\\n");
}
"""

    def unloaded() -> bool:
        with server.client() as c:
            return any("unloaded-marker" in e["line"] for e in c.get(f"/modules/{name}/logs").json()["lines"])

    v1 = module(name, [(path, "GET", "h")], body_handler("h", "v1", usleep_ms=1500) + unload, ".unload = on_unload,")
    v2 = module(name, [(path, "GET", "h")], body_handler("h", "v2"))
    deployed(server, v1)
    with server.client() as c:
        assert 200 == c.post("/mgnt", params={"check": 1}, files={"code": ("v2.c", v2.encode(), "text/x-c")}).status_code
    slow: dict = {}
    t = threading.Thread(target=lambda: slow.setdefault("answer", answer(server, path)))
    t.start()
    time.sleep(0.4)
    deployed(server, v2)
    exists_while_draining = unloaded()
    t.join(30)
    assert False is exists_while_draining
    assert (200, "v1") == slow["answer"]
    assert True is wait_for(unloaded, timeout=5)


# ---------------------------------------------------------------------------
# persistence and limits


def store_snapshot(data_dir: Path) -> dict[str, tuple[int, int]]:
    store = data_dir / "store"
    return {str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns) for p in store.rglob("*") if p.is_file()}


def test_modules_survive_a_restart_without_recompiling(make_server, tmp_path: Path) -> None:
    """A new server on the same data dir serves the active module from the store, compiling nothing."""
    data = tmp_path / "data"
    first = make_server(data)
    name = unique("durable")
    source = route_module(name, f"/{name}", "still alive")
    info = deployed(first, source)
    first.stop()
    before = store_snapshot(data)

    second = make_server(data)
    assert (200, "still alive") == answer(second, f"/{name}")
    listing = {m["name"]: m["module_hash"] for m in get(second, "/modules").json()["modules"]}
    assert {name: info["module_hash"]} == listing
    assert before == store_snapshot(data)
    again = deployed(second, source)
    assert (True, True, info["module_hash"]) == (again["cache_hit"], again["noop"], again["module_hash"])


def raw_http(server: Server, request: bytes) -> tuple[int, bytes]:
    """Send request bytes in one write on a fresh connection; return (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_request_body_over_the_limit_is_413(make_server) -> None:
    """With CWEB_MAX_BODY_BYTES=1000, a 1001-byte body is a JSON 413 whether its length is declared or
    it comes chunked; 1000 bytes pass."""
    s = make_server(env={"CWEB_MAX_BODY_BYTES": "1000"})
    name = unique("limit")
    path = f"/{name}"
    code = """
static int h(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%d", req->content_length);
    res->status = HTTP_200_OK;
    return 0;
}
"""
    deployed(s, module(name, [(path, "POST", "h")], code))
    with s.client() as c:
        ok = c.post(path, content=b"x" * 1000)
        declared = c.post(path, content=b"x" * 1001)
    assert (200, "1000") == (ok.status_code, ok.text)
    assert (413, "application/json", "body_too_large") == (
        declared.status_code,
        declared.headers["content-type"],
        declared.json()["error"],
    )
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
    chunks = b"".join(b"5b\r\n" + b"x" * 91 + b"\r\n" for _ in range(11)) + b"0\r\n\r\n"
    status, body = raw_http(s, head + chunks)
    assert 413 == status, body
    assert "body_too_large" == json.loads(body)["error"]



def _agent_pid(api_pid: int) -> int:
    """The `python -m runtime` child of the api process, found through /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == api_pid and b"runtime" in cmd:
            return int(entry)
    raise AssertionError("no runtime agent child found")


def test_modules_come_back_when_the_runtime_agent_dies(make_server) -> None:
    """If the runtime agent is killed, the api starts it again and reloads every active module."""
    srv = make_server()
    name = unique("agent")
    assert srv.deploy(route_module(name, f"/{name}", "still here")).status_code == 200
    old_agent = _agent_pid(srv.proc.pid)
    os.kill(old_agent, signal.SIGKILL)
    deadline = time.monotonic() + 30
    body = None
    while time.monotonic() < deadline:
        with srv.client() as c:
            r = c.get(f"/{name}")
        if r.status_code == 200:
            body = r.text
            break
        time.sleep(0.2)
    assert "still here" == body
    assert old_agent != _agent_pid(srv.proc.pid)


def _workers_of(srv: Server, module_hash: str) -> list[dict]:
    """The agent's worker processes (GET /_cweb/workers) loaded with module_hash."""
    return [w for w in get(srv, "/_cweb/workers").json()["workers"] if w["hash"] == module_hash]


def test_a_module_that_cannot_start_at_restore_leaves_no_worker(make_server, tmp_path: Path) -> None:
    """Restore loads and starts a module's worker, then asks for its
    connections; a server restarted with more request threads than the agent
    gives connections (CWEB_WORKER_THREADS=200: 201 > 200) fails that last
    step. The module is not served and its loaded, started worker is killed,
    not left running in the agent."""
    data = tmp_path / "data"
    first = make_server(data)
    name = unique("restorefail")
    info = deployed(first, route_module(name, f"/{name}", "up"))
    assert len(_workers_of(first, info["module_hash"])) == 1
    first.stop()

    second = make_server(data, env={"CWEB_WORKER_THREADS": "200"})
    assert 404 == get(second, f"/modules/{name}").status_code
    assert f"could not restore module {name}" in second.logs()
    assert [] == _workers_of(second, info["module_hash"])


def test_a_module_whose_onload_fails_after_an_agent_restart_leaves_no_worker(make_server) -> None:
    """onload creates a table in the module's database, so it crashes on any
    later start: after the agent is killed, the reload fails, the module is
    quarantined and no worker of it is left in the new agent."""
    srv = make_server()
    name = unique("reloadfail")
    once = """
static void once(struct cweb_context *ctx) {
    if (ctx->database->exec(ctx->database, "CREATE TABLE booted (x)", NULL, NULL) != 0)
        *(volatile int *)0 = 1;
}
"""
    info = deployed(srv, module(name, [(f"/{name}", "GET", "h")], body_handler("h", "up") + once, ".onload = once,"))
    assert (200, "up") == answer(srv, f"/{name}")
    old_agent = _agent_pid(srv.proc.pid)
    os.kill(old_agent, signal.SIGKILL)
    assert wait_for(lambda: get(srv, f"/modules/{name}").json()["state"] == "quarantined", timeout=30)
    assert old_agent != _agent_pid(srv.proc.pid)
    assert 503 == get(srv, f"/{name}").status_code
    assert [] == _workers_of(srv, info["module_hash"])
