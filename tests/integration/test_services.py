"""Module services against a real server: the cross-module cache, deferred
work, the shared module database, crypto, symbols, and versions/rollback.

Modules here are built from SERVICE_MODULE (one C file exposing every service
under /<name>/...), deployed with unique names to the session `server`, or to
a server of their own (`make_server`) where a test needs a small cache, a
restart, or the fixed names of the example modules.
"""

from __future__ import annotations

import base64
import os
import threading
import time

import httpx
import pytest

from tests.conftest import Server, unique, wait_for

# A module exposing every context service under /@NAME@/...; @TAG@ is what
# GET /@NAME@/version answers (change it to make a new artifact).
SERVICE_MODULE = r"""#include <cweb.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

#define TAG "@TAG@"

static void text(http_response_t *res, http_error_t st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void text(http_response_t *res, http_error_t st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->body, HTTP_RESPONSE_SIZE, fmt, ap);
    va_end(ap);
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    res->status = st;
}

static const char *arg(http_request_t *req, const char *name, const char *dflt)
{
    const char *v = http_kv_get(req->params, name);
    return v ? v : dflt;
}

static int version(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx; (void)req;
    text(res, HTTP_200_OK, "%s", TAG);
    return 0;
}

static int cache_set(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    int rc = cweb_cache_set(ctx, arg(req, "key", ""), req->body, (size_t)req->content_length, atoi(arg(req, "ttl", "0")));
    if (rc == 0)
        text(res, HTTP_200_OK, "ok");
    else
        text(res, HTTP_500_INTERNAL_SERVER_ERROR, "set failed: %s", strerror(errno));
    return 0;
}

static int cache_get(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    ssize_t n = cweb_cache_get(ctx, arg(req, "key", ""), res->body, HTTP_RESPONSE_SIZE);
    http_kv_insert(res->headers, "Content-Type", strdup("application/octet-stream"));
    if (n < 0) {
        text(res, HTTP_404_NOT_FOUND, "missing");
        return 0;
    }
    if (n > HTTP_RESPONSE_SIZE) {
        char *big = http_response_alloc(res, (size_t)n);
        ssize_t m = big ? cweb_cache_get(ctx, arg(req, "key", ""), big, (size_t)n) : -1;
        if (m != n) {
            res->body = big ? big : res->body;
            text(res, HTTP_409_CONFLICT, "changed");
            return 0;
        }
    }
    res->content_length = (int)n;
    res->status = HTTP_200_OK;
    return 0;
}

static int cache_del(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    if (cweb_cache_del(ctx, arg(req, "key", "")) == 0)
        text(res, HTTP_200_OK, "deleted");
    else
        text(res, HTTP_404_NOT_FOUND, "missing");
    return 0;
}

/* n values of size bytes under "<prefix><i>", each filled with i & 255. */
static int cache_fill(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    long n = atol(arg(req, "n", "0")), size = atol(arg(req, "size", "0"));
    const char *prefix = arg(req, "prefix", "fill");
    char *buf = malloc((size_t)size + 1);
    char key[256];
    long failed = 0;
    for (long i = 0; buf && i < n; i++) {
        memset(buf, (int)(i & 255), (size_t)size);
        snprintf(key, sizeof(key), "%s%ld", prefix, i);
        if (cweb_cache_set(ctx, key, buf, (size_t)size, 0) != 0)
            failed++;
    }
    free(buf);
    text(res, HTTP_200_OK, "failed=%ld", failed);
    return 0;
}

/* Reads "<prefix><i>" back: how many are present, and whether each is intact. */
static int cache_check(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    long n = atol(arg(req, "n", "0")), size = atol(arg(req, "size", "0"));
    const char *prefix = arg(req, "prefix", "fill");
    unsigned char *buf = malloc((size_t)size + 1);
    char key[256];
    long present = 0, corrupt = 0, first = -1, last = -1;
    for (long i = 0; buf && i < n; i++) {
        snprintf(key, sizeof(key), "%s%ld", prefix, i);
        ssize_t got = cweb_cache_get(ctx, key, buf, (size_t)size);
        if (got < 0)
            continue;
        present++;
        if (first < 0)
            first = i;
        last = i;
        if (got != size)
            corrupt++;
        for (long j = 0; j < got && j < size; j++)
            if (buf[j] != (unsigned char)(i & 255)) {
                corrupt++;
                break;
            }
    }
    free(buf);
    text(res, HTTP_200_OK, "{\"present\":%ld,\"corrupt\":%ld,\"first\":%ld,\"last\":%ld}", present, corrupt, first, last);
    http_kv_insert(res->headers, "Content-Type", strdup("application/json"));
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Times n sets and n gets of size-byte values, each one on its own. */
static int cache_bench(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    long n = atol(arg(req, "n", "10000")), size = atol(arg(req, "size", "64"));
    long keys = atol(arg(req, "keys", "1000"));
    const char *prefix = arg(req, "prefix", "bench");
    uint64_t *set_ns = malloc(sizeof(uint64_t) * (size_t)n), *get_ns = malloc(sizeof(uint64_t) * (size_t)n);
    char *buf = calloc(1, (size_t)size + 1), key[256];
    long misses = 0;
    uint64_t t0 = ns();
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "%s%ld", prefix, i % keys);
        uint64_t a = ns();
        cweb_cache_set(ctx, key, buf, (size_t)size, 0);
        set_ns[i] = ns() - a;
    }
    uint64_t t1 = ns();
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "%s%ld", prefix, i % keys);
        uint64_t a = ns();
        if (cweb_cache_get(ctx, key, buf, (size_t)size) < 0)
            misses++;
        get_ns[i] = ns() - a;
    }
    uint64_t t2 = ns();
    qsort(set_ns, (size_t)n, sizeof(uint64_t), cmp_u64);
    qsort(get_ns, (size_t)n, sizeof(uint64_t), cmp_u64);
    text(res, HTTP_200_OK,
         "{\"n\":%ld,\"set_p50_ns\":%llu,\"set_p99_ns\":%llu,\"get_p50_ns\":%llu,\"get_p99_ns\":%llu,"
         "\"set_total_ns\":%llu,\"get_total_ns\":%llu,\"misses\":%ld}",
         n, (unsigned long long)set_ns[n / 2], (unsigned long long)set_ns[n * 99 / 100],
         (unsigned long long)get_ns[n / 2], (unsigned long long)get_ns[n * 99 / 100],
         (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1), misses);
    http_kv_insert(res->headers, "Content-Type", strdup("application/json"));
    free(set_ns);
    free(get_ns);
    free(buf);
    return 0;
}

struct put {
    struct cweb_context *ctx;
    char key[128];
    char value[128];
    int sleep_ms;
};

static void put_now(void *arg)
{
    struct put *p = arg;
    if (p->sleep_ms)
        usleep((useconds_t)p->sleep_ms * 1000);
    cweb_cache_set(p->ctx, p->key, p->value, strlen(p->value), 0);
    free(p);
}

static struct put *put_from(struct cweb_context *ctx, http_request_t *req)
{
    struct put *p = calloc(1, sizeof(*p));
    p->ctx = ctx;
    snprintf(p->key, sizeof(p->key), "%s", arg(req, "key", "k"));
    snprintf(p->value, sizeof(p->value), "%s", arg(req, "value", TAG));
    p->sleep_ms = atoi(arg(req, "sleep_ms", "0"));
    return p;
}

/* ASYNC: the value appears after the response (and sleep_ms). */
static int async_put(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    int rc = scheduler_add(ctx->scheduler, put_now, put_from(ctx, req), ASYNC);
    text(res, rc == 0 ? HTTP_202_ACCEPTED : HTTP_503_SERVICE_UNAVAILABLE, "%d", rc);
    return 0;
}

/* SYNC: queued like ASYNC (c-web-modules ignores the state). */
static int sync_put(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    int rc = scheduler_add(ctx->scheduler, put_now, put_from(ctx, req), SYNC);
    text(res, rc == 0 ? HTTP_202_ACCEPTED : HTTP_503_SERVICE_UNAVAILABLE, "%d", rc);
    return 0;
}

/* Timed: the value appears ms milliseconds from now (or at retire). */
static int later_put(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    int rc = cweb_schedule_after(ctx, (unsigned)atol(arg(req, "ms", "1000")), put_now, put_from(ctx, req));
    text(res, rc == 0 ? HTTP_202_ACCEPTED : HTTP_503_SERVICE_UNAVAILABLE, "%d", rc);
    return 0;
}

/* n autocommit inserts of (writer, i) into table; any error is reported. */
static int db_insert(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    struct sqldb *db = ctx->database;
    const char *table = arg(req, "table", "t");
    long n = atol(arg(req, "n", "1"));
    char *sql = sqlite3_mprintf("CREATE TABLE IF NOT EXISTS \"%w\" (id INTEGER PRIMARY KEY, writer TEXT, i INTEGER)", table);
    int rc = db->exec(db, sql, NULL, NULL);
    sqlite3_free(sql);
    if (rc != SQLITE_OK) {
        text(res, HTTP_500_INTERNAL_SERVER_ERROR, "create rc=%d", rc);
        return 0;
    }
    sql = sqlite3_mprintf("INSERT INTO \"%w\" (writer, i) VALUES (?, ?)", table);
    for (long i = 0; i < n; i++) {
        sqlite3_stmt *st = NULL;
        rc = db->prepare(db, sql, -1, &st, NULL);
        if (rc == SQLITE_OK) {
            db->bind_text(st, 1, "@NAME@", -1, SQLITE_STATIC);
            db->bind_int(st, 2, (int)i);
            rc = db->step(st);
            db->finalize(st);
        }
        if (rc != SQLITE_DONE) {
            sqlite3_free(sql);
            text(res, HTTP_500_INTERNAL_SERVER_ERROR, "insert rc=%d", rc);
            return 0;
        }
    }
    sqlite3_free(sql);
    text(res, HTTP_200_OK, "ok");
    return 0;
}

static int count_row(void *arg, int ncols, char **values, char **names)
{
    (void)names;
    json_t *o = arg;
    if (ncols == 2 && values[0] && values[1])
        json_object_set_new(o, values[0], json_integer(atoll(values[1])));
    return 0;
}

static int db_count(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    json_t *o = json_object();
    char *sql = sqlite3_mprintf("SELECT writer, COUNT(*) FROM \"%w\" GROUP BY writer", arg(req, "table", "t"));
    int rc = ctx->database->exec(ctx->database, sql, count_row, o);
    sqlite3_free(sql);
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    text(res, rc == SQLITE_OK ? HTTP_200_OK : HTTP_500_INTERNAL_SERVER_ERROR, "%s", rc == SQLITE_OK && s ? s : "{}");
    free(s);
    return 0;
}

static int sign(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    char out[1024];
    int n = ctx->crypto->ops.sign_token(ctx->crypto, arg(req, "t", ""), out, sizeof(out));
    if (n <= 0 || (size_t)n != strlen(out))
        text(res, HTTP_500_INTERNAL_SERVER_ERROR, "sign failed (status %d)", ctx->crypto->status);
    else
        text(res, HTTP_200_OK, "%s", out);
    return 0;
}

static int verify(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    const char *token = arg(req, "t", "");
    if (ctx->crypto->ops.verify_token(ctx->crypto, arg(req, "sig", ""), token, strlen(token)) != 0)
        text(res, HTTP_401_UNAUTHORIZED, "invalid");
    else
        text(res, HTTP_200_OK, "%s", token);
    return 0;
}

static int symbol(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)req;
    void *p = ctx->symbols->resolv(ctx->symbols->user_data, "other", "config");
    text(res, HTTP_200_OK, "%s", p ? "found" : "null");
    return 0;
}

/* Job "slow": sleeps payload.ms milliseconds, then answers {"tag": TAG}. */
static int slow_job(struct cweb_context *ctx, const job_payload_t *payload, job_ctx_t *job)
{
    (void)ctx;
    json_t *root = json_loadb(payload->json, payload->json_len, 0, NULL);
    long ms = root ? (long)json_integer_value(json_object_get(root, "ms")) : 0;
    json_decref(root);
    usleep((useconds_t)ms * 1000);
    job->set_result(job, "{\"tag\": \"" TAG "\"}");
    return 0;
}

export module_t config = {
    .name = "@NAME@", .author = "tests",
    .jobs = { {"slow", slow_job, NULL} }, .job_size = 1,
    .routes = {
        {"/@NAME@/version", "GET", version, NONE},
        {"/@NAME@/cache/set", "POST", cache_set, NONE},
        {"/@NAME@/cache/get", "GET", cache_get, NONE},
        {"/@NAME@/cache/del", "POST", cache_del, NONE},
        {"/@NAME@/cache/fill", "POST", cache_fill, NONE},
        {"/@NAME@/cache/check", "GET", cache_check, NONE},
        {"/@NAME@/cache/bench", "GET", cache_bench, NONE},
        {"/@NAME@/async", "POST", async_put, NONE},
        {"/@NAME@/sync", "POST", sync_put, NONE},
        {"/@NAME@/later", "POST", later_put, NONE},
        {"/@NAME@/db/insert", "POST", db_insert, NONE},
        {"/@NAME@/db/count", "GET", db_count, NONE},
        {"/@NAME@/sign", "GET", sign, NONE},
        {"/@NAME@/verify", "GET", verify, NONE},
        {"/@NAME@/symbol", "GET", symbol, NONE},
    },
    .size = 15,
};
"""


def service_module(name: str, tag: str = "v1") -> str:
    return SERVICE_MODULE.replace("@NAME@", name).replace("@TAG@", tag)


def deployed(server: Server, source: str, filename: str = "module.c") -> dict:
    """Deploy and insist it worked; returns the response JSON."""
    r = server.deploy(source, filename)
    assert 200 == r.status_code, r.text
    return r.json()


class Svc:
    """HTTP helpers for one deployed SERVICE_MODULE."""

    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.name = name

    def call(self, method: str, route: str, **kw: object) -> httpx.Response:
        with self.server.client() as c:
            return c.request(method, f"/{self.name}/{route}", **kw)  # type: ignore[arg-type]

    def set(self, key: str, value: bytes, ttl: int = 0) -> None:
        r = self.call("POST", "cache/set", params={"key": key, "ttl": ttl}, content=value)
        assert (200, "ok") == (r.status_code, r.text)

    def get(self, key: str) -> bytes | None:
        r = self.call("GET", "cache/get", params={"key": key})
        assert r.status_code in (200, 404), r.text
        return r.content if r.status_code == 200 else None

    def version(self) -> str:
        return self.call("GET", "version").text


@pytest.fixture(scope="module")
def pair(server: Server) -> tuple[Svc, Svc]:
    """Two service modules (two worker processes) on the session server."""
    a, b = unique("sva"), unique("svb")
    deployed(server, service_module(a))
    deployed(server, service_module(b))
    return Svc(server, a), Svc(server, b)


# ---------------------------------------------------------------------------
# cross-module cache


def test_value_set_by_one_module_is_read_by_another(pair: tuple[Svc, Svc]) -> None:
    a, b = pair
    key = unique("k")
    assert b.get(key) is None
    a.set(key, b"shared across workers")
    assert b"shared across workers" == b.get(key)


def test_value_larger_than_the_response_buffer_round_trips(pair: tuple[Svc, Svc]) -> None:
    a, b = pair
    key = unique("big")
    value = os.urandom(100_000)
    a.set(key, value)
    assert value == b.get(key)


def test_set_replaces_and_delete_removes(pair: tuple[Svc, Svc]) -> None:
    a, b = pair
    key = unique("k")
    a.set(key, b"one")
    b.set(key, b"two")
    assert b"two" == a.get(key)
    assert 200 == b.call("POST", "cache/del", params={"key": key}).status_code
    assert a.get(key) is None
    assert 404 == a.call("POST", "cache/del", params={"key": key}).status_code


def test_entry_expires_after_its_ttl(pair: tuple[Svc, Svc]) -> None:
    a, b = pair
    key = unique("ttl")
    a.set(key, b"short-lived", ttl=2)
    assert b"short-lived" == b.get(key)
    time.sleep(2.3)
    assert b.get(key) is None


def test_invalid_keys_are_refused(pair: tuple[Svc, Svc]) -> None:
    a, _ = pair
    for key in ("", "k" * 251):
        r = a.call("POST", "cache/set", params={"key": key}, content=b"x")
        assert 500 == r.status_code, key
        assert a.get(key) is None


def check(svc: Svc, prefix: str, n: int, size: int) -> dict:
    r = svc.call("GET", "cache/check", params={"prefix": prefix, "n": n, "size": size})
    assert 200 == r.status_code, r.text
    return r.json()


def fill(svc: Svc, prefix: str, n: int, size: int) -> None:
    r = svc.call("POST", "cache/fill", params={"prefix": prefix, "n": n, "size": size})
    assert (200, "failed=0") == (r.status_code, r.text)


def test_full_cache_evicts_least_recently_used(make_server) -> None:
    """Filling past the size bound evicts the entries used longest ago: an
    entry read after it was written outlives older, unread ones."""
    server = make_server(env={"CWEB_CACHE_BYTES": str(1 << 20)})
    w, r = Svc(server, unique("fill")), Svc(server, unique("read"))
    deployed(server, service_module(w.name))
    deployed(server, service_module(r.name))
    size = 8192 - 64  # about 8 KiB each with the key and the entry's bookkeeping
    probes = 2 * (1 << 20) // 8192
    fill(w, "probe", probes, size)
    capacity = check(r, "probe", probes, size)
    assert 0 == capacity["corrupt"]
    assert probes - 1 == capacity["last"]  # the newest entry is there...
    assert 0 < capacity["present"] < probes  # ...and the oldest were evicted
    m = capacity["present"]
    n = m * 2 // 5
    fill(w, "a", n, size)
    assert r.get("a0") is not None  # touch a0: now the newest of the a's
    fill(w, "b", n, size)
    fill(r, "c", n, size)  # evicts the last probes, then a1, a2, ... but not a0
    assert r.get("a0") is not None
    assert r.get("a1") is None
    assert n == check(r, "b", n, size)["present"]
    assert n == check(r, "c", n, size)["present"]
    assert 0 == check(r, "a", n, size)["corrupt"]


def test_cache_size_comes_from_the_environment(make_server) -> None:
    """CWEB_CACHE_BYTES=2M: the largest value is 1/16 of it (128 KiB)."""
    server = make_server(env={"CWEB_CACHE_BYTES": "2M"})
    svc = Svc(server, unique("size"))
    deployed(server, service_module(svc.name))
    svc.set("fits", b"x" * (128 << 10))
    r = svc.call("POST", "cache/set", params={"key": "too-big"}, content=b"x" * ((128 << 10) + 1))
    assert (500, "set failed: Argument list too long") == (r.status_code, r.text)
    with server.client() as c:
        assert "cweb_cache_capacity_bytes 2.097152e+06" in c.get("/metrics").text
    assert not (server.data_dir / "cache.shm").exists()


def test_value_survives_a_hot_swap_of_its_writer(server: Server) -> None:
    a, b = Svc(server, unique("swa")), Svc(server, unique("swb"))
    deployed(server, service_module(a.name, "v1"))
    deployed(server, service_module(b.name))
    key = unique("k")
    a.set(key, b"written by v1")
    swap = deployed(server, service_module(a.name, "v2"))
    assert swap["previous_hash"] is not None
    assert "v2" == a.version()
    assert b"written by v1" == a.get(key)
    assert b"written by v1" == b.get(key)


def test_cache_starts_empty_after_a_server_restart(make_server) -> None:
    server = make_server()
    svc = Svc(server, unique("rs"))
    deployed(server, service_module(svc.name))
    svc.set("before-restart", b"x")
    server.stop()
    server.start()
    assert svc.get("before-restart") is None


# ---------------------------------------------------------------------------
# scheduler


def test_async_work_runs_after_the_route_returned(pair: tuple[Svc, Svc]) -> None:
    a, b = pair
    key = unique("async")
    t0 = time.monotonic()
    r = a.call("POST", "async", params={"key": key, "value": "done", "sleep_ms": 2000})
    assert 202 == r.status_code
    assert time.monotonic() - t0 < 2.0
    assert b.get(key) is None
    assert wait_for(lambda: b.get(key) == b"done", 5)


def test_sync_work_is_queued_like_async_work(pair: tuple[Svc, Svc]) -> None:
    """As in c-web-modules, SYNC is not a different mode: the work joins the
    module's one scheduler queue and runs after the route returned."""
    a, b = pair
    key = unique("sync")
    assert 202 == a.call("POST", "sync", params={"key": key, "value": "done", "sleep_ms": 1000}).status_code
    assert b.get(key) is None
    assert wait_for(lambda: b.get(key) == b"done", 5)


def test_timed_work_runs_after_its_delay(pair: tuple[Svc, Svc]) -> None:
    a, b = pair
    key = unique("later")
    t0 = time.monotonic()
    assert 202 == a.call("POST", "later", params={"key": key, "value": "late", "ms": 2000}).status_code
    assert b.get(key) is None
    assert wait_for(lambda: b.get(key) == b"late", 10, interval=0.02)
    assert time.monotonic() - t0 >= 2.0


def test_queued_work_runs_before_unload_on_swap(server: Server) -> None:
    """A hot swap retires the old version only after its timed work (due in
    ten minutes) and its queued ASYNC work have run."""
    a, b = Svc(server, unique("qa")), Svc(server, unique("qb"))
    deployed(server, service_module(a.name, "v1"))
    deployed(server, service_module(b.name))
    timed, queued = unique("timed"), unique("queued")
    assert 202 == a.call("POST", "later", params={"key": timed, "value": "from-v1", "ms": 600_000}).status_code
    assert 202 == a.call("POST", "async", params={"key": queued, "value": "from-v1", "sleep_ms": 1000}).status_code
    assert b.get(timed) is None
    deployed(server, service_module(a.name, "v2"))
    assert wait_for(lambda: b.get(timed) == b"from-v1", 15)
    assert wait_for(lambda: b.get(queued) == b"from-v1", 15)


def test_timed_work_runs_before_unload_on_removal(server: Server) -> None:
    a, b = Svc(server, unique("ra")), Svc(server, unique("rb"))
    deployed(server, service_module(a.name))
    deployed(server, service_module(b.name))
    key = unique("timed")
    assert 202 == a.call("POST", "later", params={"key": key, "value": "flushed", "ms": 600_000}).status_code
    with server.client() as c:
        assert 200 == c.delete(f"/modules/{a.name}").status_code
    assert wait_for(lambda: b.get(key) == b"flushed", 15)


# ---------------------------------------------------------------------------
# shared database


def test_each_module_writes_a_database_of_its_own(server: Server, pair: tuple[Svc, Svc]) -> None:
    """Concurrent autocommit inserts from several threads of two modules all
    succeed, and each module sees only its own rows: the database is a file
    per module name, <data_dir>/modules-data/<name>/module.db."""
    a, b = pair
    table = unique("t")
    rounds, rows, threads = 10, 25, 4
    failures: list[str] = []

    def writer(svc: Svc) -> None:
        with svc.server.client() as c:
            for _ in range(rounds):
                r = c.post(f"/{svc.name}/db/insert", params={"table": table, "n": rows})
                if (r.status_code, r.text) != (200, "ok"):
                    failures.append(f"{svc.name}: {r.status_code} {r.text}")

    workers = [threading.Thread(target=writer, args=(svc,)) for svc in (a, b) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert [] == failures
    assert {a.name: rounds * rows * threads} == a.call("GET", "db/count", params={"table": table}).json()
    assert {b.name: rounds * rows * threads} == b.call("GET", "db/count", params={"table": table}).json()
    for svc in (a, b):
        folder = server.data_dir / "modules-data" / svc.name
        assert (folder / "module.db").exists()
        assert 0o700 == folder.stat().st_mode & 0o777
    assert not (server.data_dir / "modules.db").exists()


def test_module_database_is_kept_across_versions(server: Server) -> None:
    svc = Svc(server, unique("dbv"))
    deployed(server, service_module(svc.name, "v1"))
    table = unique("t")
    assert 200 == svc.call("POST", "db/insert", params={"table": table, "n": 3}).status_code
    deployed(server, service_module(svc.name, "v2"))
    assert "v2" == svc.version()
    assert {svc.name: 3} == svc.call("GET", "db/count", params={"table": table}).json()


# ---------------------------------------------------------------------------
# crypto and symbols


def sign(svc: Svc, token: str) -> str:
    r = svc.call("GET", "sign", params={"t": token})
    assert 200 == r.status_code, r.text
    return r.text


def verifies(svc: Svc, signature: str, token: str) -> bool:
    r = svc.call("GET", "verify", params={"sig": signature, "t": token})
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def test_token_signed_by_one_module_verifies_in_another(pair: tuple[Svc, Svc]) -> None:
    """c-web-modules' format: sign_token writes the base64 signature (64-column
    lines) of the token and returns its length; verify_token checks a
    signature against the token."""
    a, b = pair
    token = "user:42|role=admin"
    signature = sign(a, token)
    assert signature.endswith("\n") and all(len(line) <= 64 for line in signature.splitlines())
    assert verifies(b, signature, token)


@pytest.mark.parametrize("tamper", ["token", "signature", "truncate", "empty", "garbage"])
def test_tampered_token_is_rejected(pair: tuple[Svc, Svc], tamper: str) -> None:
    a, b = pair
    signature = sign(a, "user:42")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    sig, token = {
        "token": (signature, "user:43"),
        "signature": (flipped, "user:42"),
        "truncate": (signature[:-6], "user:42"),
        "empty": ("", "user:42"),
        "garbage": ("!!not base64!!", "user:42"),
    }[tamper]
    assert not verifies(b, sig, token)


def test_signing_key_pair_is_generated_once_outside_every_worker(make_server) -> None:
    """Without TLS the server generates a key pair in <data_dir>/signing/
    (key 0600); tokens signed before a restart verify after it."""
    server = make_server()
    svc = Svc(server, unique("keep"))
    deployed(server, service_module(svc.name))
    signature = sign(svc, "survives")
    key = server.data_dir / "signing" / "server.key"
    assert 0o600 == key.stat().st_mode & 0o777
    assert b"PRIVATE KEY" in key.read_bytes()
    server.stop()
    server.start()
    assert verifies(svc, signature, "survives")
    assert not (server.data_dir / "server.key.bin").exists()


# Written as a module for c-web-modules' HEAD would be (include/db.h,
# include/crypto.h): struct sqldb * first, ops embedded in struct crypto.
HEAD_USAGE = r"""#include <cweb.h>

static int run(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)req;
    struct sqldb *db = ctx->database;
    struct crypto *crypto = ctx->crypto;
    json_t *o = json_object();
    json_object_set_new(o, "create", json_integer(db->exec(db, "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT)", NULL, NULL)));
    sqlite3_stmt *stmt = NULL;
    db->prepare(db, "INSERT INTO users (name) VALUES (?)", -1, &stmt, NULL);
    db->bind_text(stmt, 1, "ada", -1, SQLITE_TRANSIENT);
    json_object_set_new(o, "insert", json_integer(db->step(stmt)));
    db->finalize(stmt);
    json_object_set_new(o, "changes", json_integer(db->changes(db)));
    int rowid = db->last_insert_rowid(db);
    json_object_set_new(o, "rowid", json_integer(rowid));
    db->prepare(db, "SELECT id, name FROM users WHERE id = ?", -1, &stmt, NULL);
    db->bind_int(stmt, 1, rowid);
    if (db->step(stmt) == SQLITE_ROW) {
        json_object_set_new(o, "columns", json_integer(db->column_count(stmt)));
        json_object_set_new(o, "id", json_integer(db->column_int(stmt, 0)));
        json_object_set_new(o, "name", json_string(db->column_text(stmt, 1)));
    }
    db->reset(stmt);
    db->finalize(stmt);

    json_object_set_new(o, "loaded", json_boolean(crypto->status == CRYPTO_LOADED));
    json_object_set_new(o, "ctx", json_boolean(crypto->ctx != NULL));
    char sig[1024];
    const char *token = "user=ada;exp=4102444800";
    int n = crypto->ops.sign_token(crypto, token, sig, sizeof(sig));
    json_object_set_new(o, "sign", json_integer(n));
    json_object_set_new(o, "signature", json_string(n > 0 ? sig : ""));
    json_object_set_new(o, "verify", json_integer(crypto->ops.verify_token(crypto, sig, token, strlen(token))));
    json_object_set_new(o, "verify_prefix", json_integer(crypto->ops.verify_token(crypto, sig, token, 8)));
    json_object_set_new(o, "tampered", json_integer(crypto->ops.verify_token(crypto, sig, "user=bob;exp=4102444800", strlen(token))));
    char small[8];
    json_object_set_new(o, "small_buffer", json_integer(crypto->ops.sign_token(crypto, token, small, sizeof(small))));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", s);
    free(s);
    res->status = HTTP_200_OK;
    return 0;
}

export module_t config = {
    .name = "@NAME@", .author = "tests",
    .routes = { {"/@NAME@/run", "GET", run, NONE} }, .size = 1,
};
"""


def test_sqldb_and_crypto_as_c_web_modules_head_declares_them(server: Server) -> None:
    name = unique("head")
    d = deployed(server, HEAD_USAGE.replace("@NAME@", name))
    assert [] == d["warnings"], d["warnings"]
    with server.client() as c:
        first = c.get(f"/{name}/run").json()
        second = c.get(f"/{name}/run").json()
    assert {"create": 0, "insert": 101, "changes": 1, "rowid": 1, "columns": 2, "id": 1, "name": "ada"}.items() <= first.items()
    assert 2 == second["rowid"]
    assert (True, True) == (first["loaded"], first["ctx"])
    assert first["sign"] == len(first["signature"]) > 0
    assert (0, -1, -1, -1) == (first["verify"], first["verify_prefix"], first["tampered"], first["small_buffer"])


def test_tokens_are_signed_with_the_tls_key_pair_when_the_server_has_one(make_server, tmp_path) -> None:
    """server.crt + server.key in the working directory: signatures verify
    with the certificate's public key, as in c-web-modules."""
    import ssl

    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    ca = trustme.CA()
    workdir = tmp_path / "work"
    workdir.mkdir()
    cert = ca.issue_cert("127.0.0.1")
    (workdir / "server.crt").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(workdir / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    s = Server(tmp_path / "data", env={"CWEB_WORKDIR": str(workdir)})
    s.scheme, s.verify = "https", ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    s.start()
    try:
        name = unique("tls")
        deployed(s, HEAD_USAGE.replace("@NAME@", name))
        with s.client() as c:
            out = c.get(f"/{name}/run").json()
    finally:
        s.stop()
    assert 0 == out["verify"]
    sig = base64.b64decode(out["signature"])
    public = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_key()
    token = b"user=ada;exp=4102444800"
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(sig, token, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(sig, token, ec.ECDSA(hashes.SHA256()))
    assert not (tmp_path / "data" / "signing").exists()


def test_symbols_of_other_modules_resolve_to_null(pair: tuple[Svc, Svc]) -> None:
    a, _ = pair
    assert "null" == a.call("GET", "symbol").text


# ---------------------------------------------------------------------------
# versions, rollback, provenance


def artifact_count(server: Server) -> int:
    return len(list((server.data_dir / "store" / "artifacts").glob("*.so")))


def test_versions_list_every_artifact_deployed_under_a_name(server: Server) -> None:
    name = unique("ver")
    h1 = deployed(server, service_module(name, "v1"))["module_hash"]
    d2 = deployed(server, service_module(name, "v2"))
    with server.client() as c:
        r = c.get(f"/modules/{name}/versions")
    assert 200 == r.status_code
    body = r.json()
    assert name == body["name"]
    assert [d2["module_hash"], h1] == [v["module_hash"] for v in body["versions"]]
    assert [True, False] == [v["active"] for v in body["versions"]]
    assert d2["source_sha256"] == body["versions"][0]["source_sha256"]
    assert all(isinstance(v["deployed_at"], float) for v in body["versions"])


def test_versions_of_unknown_module_is_404(server: Server) -> None:
    with server.client() as c:
        r = c.get(f"/modules/{unique('nope')}/versions")
    assert (404, "module_not_found") == (r.status_code, r.json()["error"])


def test_rollback_serves_the_old_version_without_compiling(server: Server) -> None:
    svc = Svc(server, unique("rb"))
    h1 = deployed(server, service_module(svc.name, "v1"))["module_hash"]
    h2 = deployed(server, service_module(svc.name, "v2"))["module_hash"]
    assert "v2" == svc.version()
    before = artifact_count(server)
    with server.client() as c:
        r = c.post(f"/modules/{svc.name}/rollback", json={"module_hash": h1})
    assert 200 == r.status_code, r.text
    body = r.json()
    assert (h1, h2, False) == (body["module_hash"], body["previous_hash"], body["noop"])
    assert "v1" == svc.version()
    assert before == artifact_count(server)
    with server.client() as c:
        again = c.post(f"/modules/{svc.name}/rollback", json={"module_hash": h1}).json()
        versions = c.get(f"/modules/{svc.name}/versions").json()["versions"]
        listed = c.get(f"/modules/{svc.name}").json()
    assert again["noop"] is True
    assert {h1: True, h2: False} == {v["module_hash"]: v["active"] for v in versions}
    assert h1 == listed["module_hash"]


def test_rollback_to_a_version_whose_artifact_is_gone_is_409_and_keeps_serving(server: Server) -> None:
    """The registry still knows the version but its artifact left the store:
    the runtime's artifact_missing is a 409 (the server's state, not the
    request, is in the way), and the active version keeps answering."""
    svc = Svc(server, unique("rbgone"))
    h1 = deployed(server, service_module(svc.name, "v1"))["module_hash"]
    deployed(server, service_module(svc.name, "v2"))
    (server.data_dir / "store" / "artifacts" / f"{h1}.so").unlink()
    with server.client() as c:
        r = c.post(f"/modules/{svc.name}/rollback", json={"module_hash": h1})
    assert (409, "artifact_missing") == (r.status_code, r.json()["error"]), r.text
    assert "v2" == svc.version()


def test_rollback_keeps_running_jobs_on_their_version(server: Server) -> None:
    """A job running when its module is rolled back finishes on the hash it
    started on; the routes switch to the old version at once."""
    svc = Svc(server, unique("rbj"))
    h1 = deployed(server, service_module(svc.name, "v1"))["module_hash"]
    h2 = deployed(server, service_module(svc.name, "v2"))["module_hash"]
    with server.client() as c:
        job = c.post("/jobs", json={"module": svc.name, "job": "slow", "payload": {"ms": 2000}}).json()
        assert h2 == job["module_hash"]
        uuid = job["job_uuid"]
        assert wait_for(lambda: c.get(f"/jobs/{uuid}").json()["state"] == "running", 10)
        r = c.post(f"/modules/{svc.name}/rollback", json={"module_hash": h1})
        assert 200 == r.status_code, r.text
        assert "v1" == svc.version()
        assert wait_for(lambda: c.get(f"/jobs/{uuid}").json()["state"] in ("done", "failed"), 20)
        done = c.get(f"/jobs/{uuid}").json()
    assert ("done", h2, {"tag": "v2"}) == (done["state"], done["module_hash"], done["result"])


def test_rollback_rejects_what_is_not_a_version_of_the_module(server: Server) -> None:
    name, other = unique("rj"), unique("ro")
    deployed(server, service_module(name))
    foreign = deployed(server, service_module(other))["module_hash"]
    cases = [
        (name, {"module_hash": foreign}, 404, "version_not_found"),
        (name, {"module_hash": "0" * 64}, 404, "version_not_found"),
        (unique("none"), {"module_hash": foreign}, 404, "module_not_found"),
        (name, {"module_hash": "xyz"}, 422, "invalid_body"),
        (name, {"hash": foreign}, 422, "invalid_body"),
        (name, ["not", "an", "object"], 422, "invalid_body"),
    ]
    with server.client() as c:
        for target, body, status, code in cases:
            r = c.post(f"/modules/{target}/rollback", json=body)
            assert (status, code) == (r.status_code, r.json()["error"]), (target, body)
            assert r.json()["message"]
        r = c.post(f"/modules/{name}/rollback", content=b"{not json", headers={"content-type": "application/json"})
        assert (422, "invalid_body") == (r.status_code, r.json()["error"])
        assert "v1" == c.get(f"/{name}/version").text


def test_artifact_provenance_and_source(server: Server) -> None:
    name = unique("prov")
    source = service_module(name, "v1")
    d = deployed(server, source, "prov.c")
    h = d["module_hash"]
    with server.client() as c:
        r = c.get(f"/artifacts/{h}")
        src = c.get(f"/artifacts/{h}/source")
        missing = c.get(f"/artifacts/{'0' * 64}")
        bad = c.get("/artifacts/not-a-hash")
    assert 200 == r.status_code, r.text
    art = r.json()
    assert (h, name) == (art["module_hash"], art["name"])
    assert (d["source_sha256"], d["build_key"]) == (art["source_sha256"], art["build_key"])
    assert art["compiler"] and isinstance(art["built_at"], float)
    assert ["deploy"] == [e["action"] for e in art["deploys"]]
    assert {"method": "GET", "path": f"/{name}/version"} in art["routes"]
    assert 200 == src.status_code
    assert source == src.text
    assert (404, "artifact_not_found") == (missing.status_code, missing.json()["error"])
    assert 404 == bad.status_code
