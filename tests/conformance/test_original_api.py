"""Conformance with c-web-modules (the original, at commit a4a06d9).

Each test deploys a module written the way a module for the original is
written (its header names, its API, its idioms) to one real server of this
suite, and asserts what the original answers. The six examples the original
ships (counter, json, static, websocket, chat, job_sum) run here too, as
cweb's example/ versions of them, unchanged.

What cweb deliberately does differently is listed in docs/SDK.md; a test
here that asserts a difference says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import EXAMPLES, Server, unique, wait_for

# include/ of c-web-modules at a4a06d9: every name a module could include.
ORIGINAL_HEADERS = [
    "active_conn.h", "container.h", "crypto.h", "cweb.h", "cweb_config.h", "db.h", "defer.h", "engine.h",
    "http.h", "jobs.h", "libevent.h", "list.h", "map.h", "pool.h", "queue.h", "router.h", "scheduler.h",
    "server.h", "shutdown.h", "uuid.h", "ws.h",
]

# http_error_t of the original: (name, value, code sent, reason phrase).
ORIGINAL_STATUSES = [
    ("HTTP_000_UNKNOWN", 0, 400, "Bad Request"),
    ("HTTP_101_SWITCHING_PROTOCOLS", 1, 101, "Switching Protocols"),
    ("HTTP_200_OK", 2, 200, "OK"),
    ("HTTP_302_FOUND", 3, 302, "Found"),
    ("HTTP_400_BAD_REQUEST", 4, 400, "Bad Request"),
    ("HTTP_401_UNAUTHORIZED", 5, 401, "Unauthorized"),
    ("HTTP_403_FORBIDDEN", 6, 403, "Forbidden"),
    ("HTTP_404_NOT_FOUND", 7, 404, "Not Found"),
    ("HTTP_405_METHOD_NOT_ALLOWED", 8, 405, "Method Not Allowed"),
    ("HTTP_409_CONFLICT", 9, 409, "Conflict"),
    ("HTTP_413_PAYLOAD_TOO_LARGE", 10, 413, "Payload Too Large"),
    ("HTTP_414_URI_TOO_LONG", 11, 414, "URI Too Long"),
    ("HTTP_426_UPGRADE_REQUIRED", 12, 426, "Upgrade Required"),
    ("HTTP_500_INTERNAL_SERVER_ERROR", 13, 500, "Internal Server Error"),
    ("HTTP_501_NOT_IMPLEMENTED", 14, 501, "Not Implemented"),
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The suite's own server, working directory example/ (for static.c),
    so the examples keep their fixed names and paths."""
    s = Server(tmp_path_factory.mktemp("conformance") / "data", env={"CWEB_WORKDIR": str(EXAMPLES)}).start()
    yield s
    s.stop()


def deployed(server: Server, source: str) -> dict:
    r = server.deploy(source)
    assert 200 == r.status_code, r.text
    return r.json()


def get(server: Server, path: str, **kw: Any) -> httpx.Response:
    with server.client() as c:
        return c.get(path, **kw)


def one_route(name: str, code: str, fn: str = "handle", method: str = "GET", includes: str = "#include <cweb.h>") -> str:
    return f"""{includes}
{code}
export module_t config = {{
    .name = "{name}",
    .author = "conformance",
    .routes = {{ {{"/{name}", "{method}", {fn}, NONE}} }},
    .size = 1,
}};
"""


# ---------------------------------------------------------------------------
# headers


def test_every_header_of_the_original_is_shipped_and_resolves_to_the_sdk(srv: Server) -> None:
    """/sdk.tar.gz holds every header name of the original's include/, and a
    module including all of them builds and serves, using what they declare;
    every member of ctx is non-NULL."""
    with tarfile.open(fileobj=io.BytesIO(get(srv, "/sdk.tar.gz").content)) as tar:
        shipped = {n.removeprefix("cweb-sdk/") for n in tar.getnames()}
    assert set(ORIGINAL_HEADERS) <= shipped

    name = unique("hdrs")
    includes = "\n".join(f"#include <{h}>" for h in ORIGINAL_HEADERS)
    code = r"""
static atomic_int calls;
static int ran_deferred;
static int handle(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    {
        defer { ran_deferred++; }
    }
    snprintf(res->body, HTTP_RESPONSE_SIZE, "calls=%d deferred=%d MAP_OK=%d UUID_STR_LEN=%d chunked=%d ws=%d ctx=%d%d%d%d%d%d",
             atomic_fetch_add(&calls, 1) + 1, ran_deferred, MAP_OK, UUID_STR_LEN,
             req->transfer_encoding_chunked, http_is_websocket_upgrade(req),
             !!ctx->cache, !!ctx->scheduler, !!ctx->database, !!ctx->crypto, !!ctx->symbols, !!ctx->jobs);
    res->status = HTTP_200_OK;
    return 0;
}
"""
    deployed(srv, one_route(name, code, includes=includes))
    assert "calls=1 deferred=1 MAP_OK=0 UUID_STR_LEN=37 chunked=0 ws=0 ctx=111111" == get(srv, f"/{name}").text
    assert "calls=2 deferred=2" in get(srv, f"/{name}").text


def test_stdatomic_comes_with_cweb_h_alone(srv: Server) -> None:
    """The original's cweb.h reaches <stdatomic.h> through scheduler.h."""
    name = unique("atomic")
    code = r"""
static atomic_int hits;
static int handle(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%d", atomic_fetch_add(&hits, 1) + 1);
    return 0;
}
"""
    deployed(srv, one_route(name, code))
    assert ["1", "2", "3"] == [get(srv, f"/{name}").text for _ in range(3)]


REFUSED = [
    ("http_parse", "<http.h>", 'http_parse("GET / HTTP/1.1\\r\\n\\r\\n", 18, req);'),
    ("scheduler_cancel", "<scheduler.h>", "scheduler_cancel(ctx->scheduler);"),
    ("jobs_bind", "<cweb.h>", "jobs_bind(NULL, NULL);"),
    ("list_create", "<list.h>", "list_create();"),
    ("router_resolve", "<router.h>", 'router_resolve(NULL, "m", "s");'),
]


@pytest.mark.parametrize(("symbol", "header", "call"), REFUSED, ids=[r[0] for r in REFUSED])
def test_functions_cweb_cannot_offer_fail_the_build_naming_the_symbol(srv: Server, symbol: str, header: str, call: str) -> None:
    """Never a raw linker error: the diagnostic names the function and the reason."""
    code = f"""
static int handle(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {{
    (void)ctx; (void)req; (void)res;
    {call}
    return 0;
}}
"""
    with srv.client() as c:
        r = c.post("/mgnt", params={"check": 1},
                   files={"code": ("refused.c", one_route(unique("refused"), code, includes=f"#include <cweb.h>\n#include {header}"), "text/x-c")})
    assert (422, "compile_failed") == (r.status_code, r.json()["error"]), r.text
    errors = [d["message"] for d in r.json()["diagnostics"] if d["severity"] == "error"]
    assert any(f"not available in cweb: {symbol}:" in m for m in errors), errors
    assert not any("undefined reference" in m for m in errors)


CHUNKED_CODE = r"""
static void one(json_t *out, const char *in) {
    char *dec = NULL;
    size_t n = 0;
    int rc = http_decode_chunked_body(in, strlen(in), &dec, &n);
    json_t *o = json_pack("{s:i}", "rc", rc);
    if (rc == 0) {
        json_object_set_new(o, "body", json_stringn(dec, n));
        free(dec);
    }
    json_array_append_new(out, o);
}

static int handle(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    json_t *out = json_array();
    one(out, "4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n");
    one(out, "4;name=value\r\nWiki\r\n0\r\nX-Trailer: 1\r\n\r\n");
    one(out, "A\r\n0123456789\r\n0\r\n\r\n");
    one(out, "4\r\nWi");
    one(out, "4\r\nWiki\r\n0\r\n");
    one(out, "zz\r\nWiki\r\n");
    one(out, "4\r\nWikiXX0\r\n\r\n");
    one(out, "0\r\nno colon\r\n\r\n");
    char *s = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", s);
    free(s);
    return 0;
}
"""


def test_http_decode_chunked_body(srv: Server) -> None:
    """0 with the data, 1 while incomplete, -1 when malformed, as the
    original's (for bodies a module fetches; req->body is decoded already)."""
    name = unique("chunked")
    deployed(srv, one_route(name, CHUNKED_CODE, includes="#include <cweb.h>\n#include <http.h>"))
    assert [
        {"rc": 0, "body": "Wikipedia"},
        {"rc": 0, "body": "Wiki"},
        {"rc": 0, "body": "0123456789"},
        {"rc": 1},
        {"rc": 1},
        {"rc": -1},
        {"rc": -1},
        {"rc": -1},
    ] == get(srv, f"/{name}").json()


# ---------------------------------------------------------------------------
# map.h, container.h, uuid.h


MAP_CODE = r"""
static int stored = 42;

static int handle(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)req;
    json_t *o = json_object();
    struct map *m = map_create(0);
    json_object_set_new(o, "insert", json_integer(map_insert(m, "a", (void *)1)));
    json_object_set_new(o, "replace", json_integer(map_insert(m, "a", (void *)2)));
    json_object_set_new(o, "size_after_replace", json_integer((json_int_t)map_size(m)));
    json_object_set_new(o, "get", json_integer((json_int_t)(intptr_t)map_get(m, "a")));
    json_object_set_new(o, "get_missing", json_boolean(map_get(m, "zz") == NULL));
    json_object_set_new(o, "remove_missing", json_integer(map_remove(m, "zz")));
    json_object_set_new(o, "remove", json_integer(map_remove(m, "a")));
    json_object_set_new(o, "get_removed", json_boolean(map_get(m, "a") == NULL));
    json_object_set_new(o, "insert_null_map", json_integer(map_insert(NULL, "a", NULL)));
    /* churn: tombstones must not lose entries or grow without bound */
    char key[32];
    int bad = 0;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 500; i++) {
            snprintf(key, sizeof key, "k%d_%d", round, i);
            if (map_insert(m, key, (void *)(intptr_t)(i + 1)) != MAP_OK) bad++;
        }
        for (int i = 0; i < 500; i++) {
            snprintf(key, sizeof key, "k%d_%d", round, i);
            if ((intptr_t)map_get(m, key) != i + 1) bad++;
            if (i % 2 && map_remove(m, key) != MAP_OK) bad++;
        }
    }
    json_object_set_new(o, "churn_errors", json_integer(bad));
    json_object_set_new(o, "churn_size", json_integer((json_int_t)map_size(m)));
    json_object_set_new(o, "capacity_bounded", json_boolean(m->capacity <= 32768 && m->size + m->tombstones <= m->capacity));
    map_destroy(m);

    struct container c;
    json_object_set_new(o, "container_init", json_integer(container_init(&c, 4)));
    json_object_set_new(o, "container_set_null", json_integer(container_set(&c, "k", NULL)));
    json_object_set_new(o, "container_set", json_integer(container_set(&c, "k", &stored)));
    json_object_set_new(o, "container_get", json_boolean(container_get(&c, "k") == &stored));
    json_object_set_new(o, "container_remove_missing", json_integer(container_remove(&c, "nope")));
    json_object_set_new(o, "container_remove", json_integer(container_remove(&c, "k")));
    container_shutdown(&c);

    /* ctx->cache keeps this module's pointers between requests */
    int *seen = container_get(ctx->cache, "stored");
    json_object_set_new(o, "ctx_cache_had", json_boolean(seen == &stored));
    json_object_set_new(o, "ctx_cache_set", json_integer(container_set(ctx->cache, "stored", &stored)));

    /* the older spelling on the header store still copies the value */
    map_insert(res->headers, "X-Old-Spelling", "kept");

    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", s);
    free(s);
    return 0;
}
"""


def test_map_and_container_return_map_error_t_as_the_original(srv: Server) -> None:
    name = unique("map")
    deployed(srv, one_route(name, MAP_CODE, includes="#include <cweb.h>\n#include <map.h>\n#include <container.h>"))
    first = get(srv, f"/{name}")
    got = first.json()
    assert {
        "insert": 0, "replace": 0, "size_after_replace": 1, "get": 2, "get_missing": True,
        "remove_missing": 3, "remove": 0, "get_removed": True, "insert_null_map": 1,
        "churn_errors": 0, "churn_size": 5000, "capacity_bounded": True,
        "container_init": 0, "container_set_null": 1, "container_set": 0, "container_get": True,
        "container_remove_missing": 3, "container_remove": 0,
        "ctx_cache_had": False, "ctx_cache_set": 0,
    } == got
    assert "kept" == first.headers["x-old-spelling"]
    assert get(srv, f"/{name}").json()["ctx_cache_had"] is True


UUID_CODE = r"""
static int handle(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    cweb_uuid_t a, b, c;
    int ok = uuid_from_string(&a, "123e4567-e89b-12d3-a456-426614174000");
    int upper = uuid_from_string(&c, "123E4567-E89B-12D3-A456-426614174000");
    int short_ = uuid_from_string(&b, "123e4567-e89b-12d3-a456-42661417400");
    int long_ = uuid_from_string(&b, "123e4567-e89b-12d3-a456-4266141740000");
    int nodash = uuid_from_string(&b, "123e4567xe89b-12d3-a456-426614174000");
    int nonhex = uuid_from_string(&b, "123e4567-e89b-12d3-a456-42661417400g");
    int null_ = uuid_from_string(&b, NULL);
    uuid_from_string(&b, "123e4567-e89b-12d3-a456-426614174000");
    int eq = uuid_equal(&a, &b), eq_case = uuid_equal(&a, &c);
    int valid = uuid_is_valid(&a);
    uuid_clear(&b);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%d %d %d %d %d %d %d | %d %d %d | %d %d [%s] [%s]",
             ok, upper, short_, long_, nodash, nonhex, null_, eq, eq_case, valid,
             uuid_is_valid(&b), uuid_equal(&a, &b), uuid_c_str(&b), uuid_c_str(&a));
    return 0;
}
"""


def test_uuid_helpers_link_and_answer_as_the_original(srv: Server) -> None:
    name = unique("uuid")
    deployed(srv, one_route(name, UUID_CODE, includes="#include <cweb.h>\n#include <uuid.h>"))
    assert "0 0 -1 -1 -1 -1 -1 | 1 0 1 | 0 0 [] [123e4567-e89b-12d3-a456-426614174000]" == get(srv, f"/{name}").text


# ---------------------------------------------------------------------------
# status codes


STATUS_CODE = r"""
static int handle(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    const char *i = http_kv_get(req->params, "i");
    if (!i) {
        snprintf(res->body, HTTP_RESPONSE_SIZE,
                 "{\"HTTP_000_UNKNOWN\":%d,\"HTTP_101_SWITCHING_PROTOCOLS\":%d,\"HTTP_200_OK\":%d,\"HTTP_302_FOUND\":%d,"
                 "\"HTTP_400_BAD_REQUEST\":%d,\"HTTP_401_UNAUTHORIZED\":%d,\"HTTP_403_FORBIDDEN\":%d,\"HTTP_404_NOT_FOUND\":%d,"
                 "\"HTTP_405_METHOD_NOT_ALLOWED\":%d,\"HTTP_409_CONFLICT\":%d,\"HTTP_413_PAYLOAD_TOO_LARGE\":%d,"
                 "\"HTTP_414_URI_TOO_LONG\":%d,\"HTTP_426_UPGRADE_REQUIRED\":%d,\"HTTP_500_INTERNAL_SERVER_ERROR\":%d,"
                 "\"HTTP_501_NOT_IMPLEMENTED\":%d}",
                 HTTP_000_UNKNOWN, HTTP_101_SWITCHING_PROTOCOLS, HTTP_200_OK, HTTP_302_FOUND, HTTP_400_BAD_REQUEST,
                 HTTP_401_UNAUTHORIZED, HTTP_403_FORBIDDEN, HTTP_404_NOT_FOUND, HTTP_405_METHOD_NOT_ALLOWED,
                 HTTP_409_CONFLICT, HTTP_413_PAYLOAD_TOO_LARGE, HTTP_414_URI_TOO_LONG, HTTP_426_UPGRADE_REQUIRED,
                 HTTP_500_INTERNAL_SERVER_ERROR, HTTP_501_NOT_IMPLEMENTED);
        return 0;
    }
    res->status = (http_error_t)atoi(i);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", http_errors[res->status]);
    return 0;
}
"""


def test_status_values_codes_and_reason_phrases_are_the_originals(srv: Server) -> None:
    """Every http_error_t of the original has its value, its code on the wire,
    its reason phrase, and its http_errors[] line; HTTP_000_UNKNOWN answers
    400 Bad Request there and here."""
    name = unique("status")
    deployed(srv, one_route(name, STATUS_CODE, includes="#include <http.h>\n#include <cweb.h>"))
    assert {n: v for n, v, _, _ in ORIGINAL_STATUSES} == get(srv, f"/{name}").json()
    seen = []
    with srv.client(follow_redirects=False) as c:
        for _, value, _, _ in ORIGINAL_STATUSES:
            if value == 1:  # a 101 without an upgrade is not an answer an HTTP client can read
                continue
            r = c.get(f"/{name}", params={"i": value})
            seen.append((value, r.status_code, r.reason_phrase, r.text))
    assert [(v, code, phrase, f"{code} {phrase}") for _, v, code, phrase in ORIGINAL_STATUSES if v != 1] == seen


# ---------------------------------------------------------------------------
# large bodies: the original's free(res->body); res->body = malloc(n)


BIG_CODE = r"""
static atomic_long served;

static void fill(char *p, long n, long seed) {
    for (long i = 0; i < n; i++)
        p[i] = (char)('a' + (i + seed) % 26);
}

/* The original's own pattern (its manage.c): replace the preallocated body. */
static int by_malloc(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    long n = atol(http_kv_get(req->params, "n"));
    free(res->body);
    res->body = malloc((size_t)n);
    fill(res->body, n, n);
    res->content_length = (int)n;
    atomic_fetch_add(&served, 1);
    return 0;
}

static int by_realloc(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    long n = atol(http_kv_get(req->params, "n"));
    res->body = realloc(res->body, (size_t)n);
    fill(res->body, n, n);
    res->content_length = (int)n;
    atomic_fetch_add(&served, 1);
    return 0;
}

static int by_alloc(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    long n = atol(http_kv_get(req->params, "n"));
    char *p = http_response_alloc(res, (size_t)n);
    fill(p, n, n);
    atomic_fetch_add(&served, 1);
    return 0;
}

/* Writes into the preallocated buffer, then frees it and answers a literal
 * copy: the freed buffer must not be reused or freed twice by the glue. */
static int free_then_strdup(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "scratch");
    free(res->body);
    res->body = strdup("replaced");
    atomic_fetch_add(&served, 1);
    return 0;
}

static int count(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%ld", atomic_load(&served));
    return 0;
}
"""


def expected_body(n: int) -> bytes:
    return bytes(ord("a") + (i + n) % 26 for i in range(n))


def test_large_bodies_by_free_and_malloc_never_crash_the_worker(srv: Server) -> None:
    """Hundreds of requests on keep-alive connections from several threads,
    each replacing res->body in one of the ways modules do: every body is
    right and the worker never restarts (its request count survives)."""
    name = unique("big")
    source = "#include <cweb.h>\n" + BIG_CODE + f"""
export module_t config = {{
    .name = "{name}",
    .routes = {{
        {{"/{name}/malloc", "GET", by_malloc, NONE}},
        {{"/{name}/realloc", "GET", by_realloc, NONE}},
        {{"/{name}/alloc", "GET", by_alloc, NONE}},
        {{"/{name}/strdup", "GET", free_then_strdup, NONE}},
        {{"/{name}/count", "GET", count, NONE}},
    }},
    .size = 5,
}};
"""
    deployed(srv, source)
    kinds = ["malloc", "realloc", "alloc", "strdup"]
    sizes = [1, 100, 16 * 1024, 16 * 1024 + 1, 70_000, 300_000]
    per_thread = 60

    def client(t: int) -> list[str]:
        problems = []
        with srv.client() as c:
            for i in range(per_thread):
                kind, n = kinds[(t + i) % len(kinds)], sizes[(t * 7 + i) % len(sizes)]
                r = c.get(f"/{name}/{kind}", params={"n": n})
                want = b"replaced" if kind == "strdup" else expected_body(n)
                if r.status_code != 200 or r.content != want:
                    problems.append(f"{kind} n={n}: {r.status_code} {len(r.content)} bytes")
        return problems

    threads = 4
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        problems = [p for ps in pool.map(client, range(threads)) for p in ps]
    assert [] == problems
    assert str(threads * per_thread) == get(srv, f"/{name}/count").text


# ---------------------------------------------------------------------------
# .size larger than the routes declared


def test_size_above_the_declared_routes_serves_them_with_a_warning(srv: Server) -> None:
    """The original skips route slots with no path or method; so does cweb,
    and the deploy answer says which were skipped."""
    name = unique("oversized")
    source = f"""#include <cweb.h>
static int handle(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {{
    (void)ctx; (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "served");
    return 0;
}}
export module_t config = {{
    .name = "{name}",
    .routes = {{ {{"/{name}", "GET", handle, NONE}} }},
    .size = 3,
}};
"""
    answer = deployed(srv, source)
    assert [{"method": "GET", "path": f"/{name}"}] == answer["routes"]
    messages = [w["message"] for w in answer["warnings"] if w["severity"] == "warning"]
    assert any(m.startswith("route 1 declares no path") for m in messages), messages
    assert any(m.startswith("route 2 declares no path") for m in messages), messages
    assert "served" == get(srv, f"/{name}").text


# ---------------------------------------------------------------------------
# scheduler


SCHED_CODE = r"""
#include <semaphore.h>
#include <unistd.h>

#define TASKS 300
static int order[TASKS];
static int done;
static atomic_int active, max_active;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void task(void *arg) {
    int now = atomic_fetch_add(&active, 1) + 1;
    int seen = atomic_load(&max_active);
    while (now > seen && !atomic_compare_exchange_weak(&max_active, &seen, now))
        ;
    usleep(200);
    pthread_mutex_lock(&lock);
    order[done++] = (int)(intptr_t)arg;
    pthread_mutex_unlock(&lock);
    atomic_fetch_sub(&active, 1);
}

/* ASYNC and SYNC interleaved, as one queue. */
static int submit(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)req;
    int refused = 0;
    for (int i = 0; i < TASKS; i++)
        refused += scheduler_add(ctx->scheduler, task, (void *)(intptr_t)i, i % 3 ? ASYNC : SYNC) != 0;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%d", refused);
    return 0;
}

static int result(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    pthread_mutex_lock(&lock);
    int in_order = 1;
    for (int i = 0; i < done; i++)
        in_order &= order[i] == i;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "{\"done\":%d,\"in_order\":%s,\"max_active\":%d}",
             done, in_order ? "true" : "false", atomic_load(&max_active));
    pthread_mutex_unlock(&lock);
    return 0;
}

/* A module's own scheduler: capacity, pending count, shutdown runs what is queued. */
static sem_t gate;
static atomic_int own_ran;
static void held(void *arg) { (void)arg; sem_wait(&gate); atomic_fetch_add(&own_ran, 1); }
static void counted(void *arg) { (void)arg; atomic_fetch_add(&own_ran, 1); }

static int own(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    struct scheduler s;
    sem_init(&gate, 0, 0);
    int init = scheduler_init(&s, 3);
    scheduler_add(&s, held, NULL, ASYNC);
    while (scheduler_pending_count(&s) != 0)
        usleep(1000);                       /* held() is running, the queue is empty */
    int rc[4];
    for (int i = 0; i < 4; i++)
        rc[i] = scheduler_add(&s, counted, NULL, ASYNC);
    int pending = scheduler_pending_count(&s);
    sem_post(&gate);
    scheduler_shutdown(&s);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "init=%d adds=%d,%d,%d,%d pending=%d ran=%d",
             init, rc[0], rc[1], rc[2], rc[3], pending, atomic_load(&own_ran));
    return 0;
}
"""


def test_scheduler_runs_async_and_sync_work_one_at_a_time_in_submission_order(srv: Server) -> None:
    """The original's scheduler is one thread and ignores ASYNC/SYNC: 300
    items, mixed, run strictly in the order added, never two at once."""
    name = unique("sched")
    source = "#include <cweb.h>\n#include <scheduler.h>\n" + SCHED_CODE + f"""
export module_t config = {{
    .name = "{name}",
    .routes = {{
        {{"/{name}/submit", "POST", submit, NONE}},
        {{"/{name}/result", "GET", result, NONE}},
        {{"/{name}/own", "GET", own, NONE}},
    }},
    .size = 3,
}};
"""
    deployed(srv, source)
    with srv.client() as c:
        assert "0" == c.post(f"/{name}/submit").text
        assert wait_for(lambda: c.get(f"/{name}/result").json()["done"] == 300, 30)
        assert {"done": 300, "in_order": True, "max_active": 1} == c.get(f"/{name}/result").json()
        assert "init=0 adds=0,0,0,-1 pending=3 ran=4" == c.get(f"/{name}/own").text


# ---------------------------------------------------------------------------
# what cannot cross processes


def test_symbols_and_the_cross_module_pointer_cache_are_flagged_in_the_deploy_answer(srv: Server) -> None:
    """ctx->symbols->resolv cannot reach another process, and ctx->cache holds
    this module's pointers only: the deploy answer's warnings say so, naming
    them, and resolv answers NULL (a documented difference)."""
    name = unique("symbols")
    code = r"""
static int value = 7;
static int handle(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)req;
    void *other = ctx->symbols->resolv(ctx->symbols->user_data, "counter", "config");
    container_set(ctx->cache, "shared", &value);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "resolv=%s", other ? "found" : "null");
    return 0;
}
"""
    answer = deployed(srv, one_route(name, code))
    messages = [w["message"] for w in answer["warnings"]]
    assert any("resolv" in m and "own process" in m for m in messages), messages
    assert any("container_set" in m and "own process" in m for m in messages), messages
    assert "resolv=null" == get(srv, f"/{name}").text


# ---------------------------------------------------------------------------
# ws->session


def test_ws_session_carries_the_handshake_id_as_the_original(srv: Server) -> None:
    """The original sets ws->session to "<id>|<since_event_id or 0>" when the
    handshake has ?id=, NULL otherwise; it stays for the connection's life."""
    name = unique("session")
    source = f"""#include <cweb.h>
#include <ws.h>
static void say(websocket_t *ws, const char *when) {{
    char line[256];
    int n = snprintf(line, sizeof line, "%s %s", when, ws->session ? ws->session : "(null)");
    ws->send(ws, line, (size_t)n);
}}
static void on_open(struct cweb_context *ctx, websocket_t *ws) {{ (void)ctx; say(ws, "open"); }}
static void on_message(struct cweb_context *ctx, websocket_t *ws, const char *m, size_t n) {{
    (void)ctx; (void)m; (void)n; say(ws, "message");
}}
export module_t config = {{
    .name = "{name}",
    .websockets = {{ {{"/{name}", on_open, on_message, NULL}} }},
    .ws_size = 1,
}};
"""
    deployed(srv, source)

    async def session(query: str) -> list[str]:
        async with connect(f"ws://127.0.0.1:{srv.port}/{name}{query}", proxy=None, open_timeout=30) as ws:
            first = await asyncio.wait_for(ws.recv(), 15)
            await ws.send("x")
            return [str(first), str(await asyncio.wait_for(ws.recv(), 15))]

    async def all_cases() -> list[list[str]]:
        return [await session(q) for q in ("?id=abc-123&since_event_id=7", "?id=abc-123", "", "?since_event_id=3")]

    assert [
        ["open abc-123|7", "message abc-123|7"],
        ["open abc-123|0", "message abc-123|0"],
        ["open (null)", "message (null)"],
        ["open (null)", "message (null)"],
    ] == asyncio.run(asyncio.wait_for(all_cases(), 90))


# ---------------------------------------------------------------------------
# the original's six examples (example/*.c: cweb's versions, unchanged)


def example(name: str) -> str:
    return (EXAMPLES / f"{name}.c").read_text()


def test_example_counter(srv: Server) -> None:
    deployed(srv, example("counter"))
    assert ["Counter: 1", "Counter: 2"] == [
        next(line for line in get(srv, "/counter").text.splitlines() if "Counter:" in line).split("<h1>")[1].split("</h1>")[0]
        for _ in range(2)]


def test_example_json(srv: Server) -> None:
    deployed(srv, example("json"))
    with srv.client() as c:
        assert ["first"] == c.post("/json/add", data={"item": "first"}).json()
        assert ["first", "second"] == c.post("/json/add", files={"item": (None, "second")}).json()
        assert ["first", "second"] == c.get("/list").json()
        assert 400 == c.post("/json/add", data={}).status_code


def test_example_static(srv: Server) -> None:
    deployed(srv, example("static"))
    with srv.client() as c:
        page = c.get("/static/index.html")
        assert (200, (EXAMPLES / "static" / "index.html").read_bytes()) == (page.status_code, page.content)
        assert page.headers["content-type"].startswith("text/html")
        assert 404 == c.get("/static/missing.txt").status_code
        assert 403 == c.get("/static/%2e%2e/counter.c").status_code


def test_example_websocket_and_chat(srv: Server) -> None:
    deployed(srv, example("websocket"))
    deployed(srv, example("chat"))

    async def clients() -> tuple[str, str, str]:
        async with connect(f"ws://127.0.0.1:{srv.port}/websocket", proxy=None, open_timeout=30) as echo:
            await echo.send("hello")
            echoed = str(await asyncio.wait_for(echo.recv(), 15))
        async with connect(f"ws://127.0.0.1:{srv.port}/chat/ws", proxy=None, open_timeout=30) as chat:
            joined = str(await asyncio.wait_for(chat.recv(), 15))
            await chat.send("hi all")
            said = str(await asyncio.wait_for(chat.recv(), 15))
        return echoed, joined, said

    echoed, joined, said = asyncio.run(asyncio.wait_for(clients(), 90))
    assert "You: hello" == echoed
    user = joined.removesuffix(" joined")
    assert user.startswith("user ") and f"{user}: hi all" == said


def test_example_job_sum(srv: Server) -> None:
    deployed(srv, example("job_sum"))
    with srv.client() as c:
        r = c.post("/jobs", json={"module": "job_sum", "job": "sum", "payload": {"n": 100}})
        assert 200 == r.status_code, r.text
        uuid = r.json()["job_uuid"]
        deadline = time.monotonic() + 30
        job: dict = {}
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{uuid}").json()
            if job.get("state") in ("done", "failed", "canceled"):
                break
            time.sleep(0.05)
    result = job.get("result")
    assert "done" == job.get("state"), job
    assert {"n": 100, "sum": 5050} == (json.loads(result) if isinstance(result, str) else result)
