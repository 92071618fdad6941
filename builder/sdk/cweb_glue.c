/*
 * cweb_glue.c - linked into every module artifact.
 *
 * Implements the SDK side of cweb.h for the module and exports the flat
 * entry ABI (cweb_abi_*) that runtime/worker.py calls through ctypes. The
 * request loop lives here, in C, so that a worker thread serving a
 * connection never re-enters Python between requests.
 */
#define _GNU_SOURCE
#include "cweb.h"
#include "cweb_wire.h"
#include "cweb_internal.h"
#include "cweb_frame.h"

#include <errno.h>
#include <execinfo.h>
#include <signal.h>
#include <strings.h>
#include <unistd.h>
#include <sys/uio.h>
#include <sys/socket.h>

#define ABI __attribute__((visibility("default")))


/* ------------------------------------------------------------------ */
/* key/value stores                                                    */

http_kv_store_t *http_kv_create(size_t initial_capacity)
{
    http_kv_store_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->capacity = initial_capacity ? initial_capacity : 8;
    s->entries = calloc(s->capacity, sizeof(http_kv_pair_t));
    if (!s->entries) {
        free(s);
        return NULL;
    }
    return s;
}

static void kv_clear(http_kv_store_t *s, int free_values)
{
    for (size_t i = 0; i < s->size; i++) {
        free(s->entries[i].key);
        if (free_values)
            free(s->entries[i].value);
    }
    s->size = 0;
}

void http_kv_destroy(http_kv_store_t *store, int free_values)
{
    if (!store)
        return;
    kv_clear(store, free_values);
    free(store->entries);
    free(store);
}

int http_kv_insert(http_kv_store_t *store, const char *key, char *value)
{
    if (!store || !key)
        return -1;
    if (store->size == store->capacity) {
        size_t cap = store->capacity ? store->capacity * 2 : 8;
        http_kv_pair_t *e = realloc(store->entries, cap * sizeof(*e));
        if (!e)
            return -1;
        store->entries = e;
        store->capacity = cap;
    }
    char *k = strdup(key);
    if (!k)
        return -1;
    store->entries[store->size].key = k;
    store->entries[store->size].value = value;
    store->size++;
    return 0;
}

char *http_kv_get(const http_kv_store_t *store, const char *key)
{
    if (!store || !key)
        return NULL;
    for (size_t i = 0; i < store->size; i++) {
        const char *k = store->entries[i].key;
        if (store->nocase ? strcasecmp(k, key) == 0 : strcmp(k, key) == 0)
            return store->entries[i].value;
    }
    return NULL;
}

size_t http_kv_size(const http_kv_store_t *store)
{
    return store ? store->size : 0;
}

int cweb_kv_map_insert(http_kv_store_t *store, const char *key, const char *value)
{
    char *v = strdup(value ? value : "");
    if (!v)
        return -1;
    if (http_kv_insert(store, key, v) != 0) {
        free(v);
        return -1;
    }
    return 0;
}

char *cweb_kv_map_get(const http_kv_store_t *store, const char *key)
{
    return http_kv_get(store, key);
}

/* ------------------------------------------------------------------ */
/* names and status codes                                              */

const char *http_methods[CWEB_METHOD_COUNT + 1] = {
    [HTTP_GET] = "GET", [HTTP_POST] = "POST", [HTTP_PUT] = "PUT", [HTTP_DELETE] = "DELETE",
    [HTTP_OPTIONS] = "OPTIONS", [HTTP_PATCH] = "PATCH", [HTTP_HEAD] = "HEAD", [CWEB_METHOD_COUNT] = NULL,
};

/* The status line text of every http_error_t, c-web-modules' table; the
 * code sent is its leading number. HTTP_000_UNKNOWN answers 400, as there. */
const char *http_errors[HTTP_STATUS_COUNT_ + 1] = {
    [HTTP_000_UNKNOWN] = "400 Bad Request",
    [HTTP_101_SWITCHING_PROTOCOLS] = "101 Switching Protocols",
    [HTTP_200_OK] = "200 OK",
    [HTTP_302_FOUND] = "302 Found",
    [HTTP_400_BAD_REQUEST] = "400 Bad Request",
    [HTTP_401_UNAUTHORIZED] = "401 Unauthorized",
    [HTTP_403_FORBIDDEN] = "403 Forbidden",
    [HTTP_404_NOT_FOUND] = "404 Not Found",
    [HTTP_405_METHOD_NOT_ALLOWED] = "405 Method Not Allowed",
    [HTTP_409_CONFLICT] = "409 Conflict",
    [HTTP_413_PAYLOAD_TOO_LARGE] = "413 Payload Too Large",
    [HTTP_414_URI_TOO_LONG] = "414 URI Too Long",
    [HTTP_426_UPGRADE_REQUIRED] = "426 Upgrade Required",
    [HTTP_500_INTERNAL_SERVER_ERROR] = "500 Internal Server Error",
    [HTTP_501_NOT_IMPLEMENTED] = "501 Not Implemented",
    [HTTP_201_CREATED] = "201 Created",
    [HTTP_202_ACCEPTED] = "202 Accepted",
    [HTTP_204_NO_CONTENT] = "204 No Content",
    [HTTP_301_MOVED_PERMANENTLY] = "301 Moved Permanently",
    [HTTP_303_SEE_OTHER] = "303 See Other",
    [HTTP_304_NOT_MODIFIED] = "304 Not Modified",
    [HTTP_307_TEMPORARY_REDIRECT] = "307 Temporary Redirect",
    [HTTP_415_UNSUPPORTED_MEDIA_TYPE] = "415 Unsupported Media Type",
    [HTTP_422_UNPROCESSABLE_ENTITY] = "422 Unprocessable Entity",
    [HTTP_429_TOO_MANY_REQUESTS] = "429 Too Many Requests",
    [HTTP_502_BAD_GATEWAY] = "502 Bad Gateway",
    [HTTP_503_SERVICE_UNAVAILABLE] = "503 Service Unavailable",
    [HTTP_504_GATEWAY_TIMEOUT] = "504 Gateway Timeout",
    [HTTP_STATUS_COUNT_] = NULL,
};

static int numeric_status(const http_response_t *res)
{
    if (res->status_code >= 100 && res->status_code <= 599)
        return res->status_code;
    if ((int)res->status >= 0 && res->status < HTTP_STATUS_COUNT_) {
        int code = http_errors[res->status] ? atoi(http_errors[res->status]) : 0;
        if (code >= 100 && code <= 599)
            return code;
    }
    return 500;
}

/* The server fills req->data before the handler runs. */
int http_parse_data(http_request_t *req)
{
    return req ? 0 : -1;
}

/* Whether the comma-separated header value lists token (any case). */
static int header_has_token(const char *value, const char *token)
{
    size_t n = strlen(token);
    for (const char *p = value; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        const char *last = end;
        while (last > p && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        if ((size_t)(last - p) == n && strncasecmp(p, token, n) == 0)
            return 1;
        p = end;
    }
    return 0;
}

int http_is_websocket_upgrade(http_request_t *req)
{
    if (!req || !req->headers)
        return 0;
    const char *upgrade = http_kv_get(req->headers, "upgrade");
    const char *connection = http_kv_get(req->headers, "connection");
    return upgrade && connection && strcasecmp(upgrade, "websocket") == 0 && header_has_token(connection, "upgrade");
}

/* ------------------------------------------------------------------ */
/* host state                                                          */

static struct {
    size_t max_response;
    char data_dir[4096];
} host = {
    .max_response = 16u << 20,
};

/* ------------------------------------------------------------------ */
/* crash reports                                                       */

/* What this thread is running for the module ("GET", "/items/[0-9]+";
 * "onload", ""; "job", "resize"): a fatal signal names it. */
static __thread const char *t_doing_kind;
static __thread const char *t_doing_what;

void cweb_crash_context(const char *kind, const char *what)
{
    t_doing_kind = kind;
    t_doing_what = what;
}

static void put_err(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

/* On a fatal signal: one line naming the signal and what the thread was
 * running, then the native backtrace, on stderr (the module's log), then
 * the signal's default action so the runtime sees the process die of it.
 * Only write(2) and backtrace_symbols_fd (which does not allocate) run
 * here; backtrace() was called once at init so it needs no dlopen now. */
static void cweb_fatal(int sig)
{
    char num[12];
    int i = (int)sizeof(num) - 1;
    num[i] = '\0';
    int v = sig;
    do {
        num[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i > 0);
    const char *name = sigabbrev_np(sig);
    put_err("cweb: fatal signal SIG");
    put_err(name ? name : "?");
    put_err(" (");
    put_err(num + i);
    put_err(")");
    if (t_doing_kind) {
        put_err(" in ");
        put_err(t_doing_kind);
        if (t_doing_what && *t_doing_what) {
            put_err(" ");
            put_err(t_doing_what);
        }
    }
    put_err("\ncweb: backtrace (newest first):\n");
    void *frames[64];
    int n = backtrace(frames, 64);
    backtrace_symbols_fd(frames, n, STDERR_FILENO);
    raise(sig); /* SA_RESETHAND | SA_NODEFER: the default action, now */
}

static void install_crash_handler(void)
{
    void *warm[1];
    backtrace(warm, 1); /* loads libgcc's unwinder outside a signal handler */
    static const int fatal[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGSYS};
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = cweb_fatal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (size_t k = 0; k < sizeof(fatal) / sizeof(fatal[0]); k++)
        sigaction(fatal[k], &sa, NULL);
}

/* ------------------------------------------------------------------ */
/* entry ABI: version, describe, lifecycle                             */

ABI int cweb_abi_version(void)
{
    return CWEB_ABI_VERSION;
}

ABI int cweb_abi_init(const char *data_dir, unsigned long long max_response)
{
    if (data_dir)
        snprintf(host.data_dir, sizeof(host.data_dir), "%s", data_dir);
    if (max_response)
        host.max_response = (size_t)max_response;
    cweb_services_init(host.data_dir);
    install_crash_handler();
    /* stdout is a pipe to the log collector: keep printf lines prompt. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    return 0;
}

/* A documentation text, clipped; null when absent or not UTF-8. */
static json_t *doc_text(const char *s, size_t max)
{
    if (!s)
        return json_null();
    json_t *v = json_stringn(s, strnlen(s, max));
    return v ? v : json_null();
}

static json_t *describe_docs(void)
{
    json_t *docs = json_array();
    if (cweb_docs == NULL)
        return docs;
    for (int i = 0; i < CWEB_DOCS_MAX; i++) {
        const cweb_doc_t *d = &cweb_docs[i];
        if (!d->method && !d->path)
            break;
        json_t *o = json_object();
        json_object_set_new(o, "method", doc_text(d->method, 16));
        json_object_set_new(o, "path", doc_text(d->path, 1024));
        json_object_set_new(o, "summary", doc_text(d->summary, 200));
        json_object_set_new(o, "description", doc_text(d->description, 4096));
        json_object_set_new(o, "example", doc_text(d->example, 4096));
        json_t *params = json_array();
        for (int k = 0; k < CWEB_DOC_PARAMS && d->params[k].name; k++) {
            json_t *p = json_object();
            json_object_set_new(p, "name", doc_text(d->params[k].name, 64));
            json_object_set_new(p, "in", doc_text(d->params[k].in, 16));
            json_object_set_new(p, "description", doc_text(d->params[k].description, 1024));
            json_object_set_new(p, "required", json_boolean(d->params[k].required));
            json_array_append_new(params, p);
        }
        json_object_set_new(o, "params", params);
        json_array_append_new(docs, o);
    }
    return docs;
}

/* ------------------------------------------------------------------ */
/* secrets (cweb_secret in cweb.h)                                     */

/* The module's secrets, set once before onload and only read after: no lock. */
static json_t *secrets;

ABI int cweb_abi_secrets(const char *json)
{
    json_t *o = json ? json_loads(json, 0, NULL) : NULL;
    if (!o || !json_is_object(o)) {
        json_decref(o);
        return -1;
    }
    json_decref(secrets);
    secrets = o;
    return 0;
}

const char *cweb_secret(const char *key)
{
    json_t *v = secrets && key ? json_object_get(secrets, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Writes the module's declaration as JSON into buf. Returns its length,
 * -1 when the module has no `config`, or the length needed if cap is too
 * small. Validation of the contents is the runtime's job. */
ABI long cweb_abi_describe(char *buf, size_t cap)
{
    if (&config == NULL)
        return -1;
    const module_t *m = &config;
    json_t *o = json_object();
    json_object_set_new(o, "name", json_stringn(m->name, strnlen(m->name, sizeof(m->name))));
    json_object_set_new(o, "author", json_stringn(m->author, strnlen(m->author, sizeof(m->author))));
    json_object_set_new(o, "size", json_integer(m->size));
    json_object_set_new(o, "ws_size", json_integer(m->ws_size));
    json_object_set_new(o, "job_size", json_integer(m->job_size));
    json_object_set_new(o, "max_routes", json_integer(MAX_ROUTES));
    json_object_set_new(o, "max_websockets", json_integer(MAX_WEBSOCKETS));
    json_object_set_new(o, "max_jobs", json_integer(MAX_JOBS));
    json_t *routes = json_array();
    for (int i = 0; i < m->size && i < MAX_ROUTES; i++) {
        const route_info_t *r = &m->routes[i];
        json_t *ro = json_object();
        json_object_set_new(ro, "path", r->path ? json_string(r->path) : json_null());
        json_object_set_new(ro, "method", r->method ? json_string(r->method) : json_null());
        json_object_set_new(ro, "has_handler", json_boolean(r->handler != NULL));
        json_object_set_new(ro, "flags", json_integer(r->flags));
        json_array_append_new(routes, ro);
    }
    json_object_set_new(o, "routes", routes);
    json_t *ws = json_array();
    for (int i = 0; i < m->ws_size && i < MAX_WEBSOCKETS; i++) {
        const websocket_info_t *w = &m->websockets[i];
        json_t *wo = json_object();
        json_object_set_new(wo, "path", w->path ? json_string(w->path) : json_null());
        json_array_append_new(ws, wo);
    }
    json_object_set_new(o, "websockets", ws);
    json_t *jobs = json_array();
    for (int i = 0; i < m->job_size && i < MAX_JOBS; i++) {
        const job_info_t *j = &m->jobs[i];
        json_t *jo = json_object();
        json_object_set_new(jo, "name", j->name ? json_string(j->name) : json_null());
        json_object_set_new(jo, "has_run", json_boolean(j->run != NULL));
        json_array_append_new(jobs, jo);
    }
    json_object_set_new(o, "jobs", jobs);
    /* Slots filled past .size (a forgotten or short .size): never served,
     * counted so the runtime can say so. */
    int unsized = 0;
    for (int i = m->size < 0 ? 0 : m->size; i < MAX_ROUTES; i++)
        unsized += m->routes[i].path != NULL || m->routes[i].handler != NULL;
    json_object_set_new(o, "unsized_routes", json_integer(unsized));
    unsized = 0;
    for (int i = m->ws_size < 0 ? 0 : m->ws_size; i < MAX_WEBSOCKETS; i++)
        unsized += m->websockets[i].path != NULL;
    json_object_set_new(o, "unsized_websockets", json_integer(unsized));
    unsized = 0;
    for (int i = m->job_size < 0 ? 0 : m->job_size; i < MAX_JOBS; i++)
        unsized += m->jobs[i].name != NULL || m->jobs[i].run != NULL;
    json_object_set_new(o, "unsized_jobs", json_integer(unsized));
    json_object_set_new(o, "docs", describe_docs());
    json_object_set_new(o, "has_onload", json_boolean(m->onload != NULL));
    json_object_set_new(o, "has_unload", json_boolean(m->unload != NULL));
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    if (!s)
        return -2;
    long n = (long)strlen(s);
    if ((size_t)n < cap)
        memcpy(buf, s, (size_t)n + 1);
    free(s);
    return n;
}

ABI void cweb_abi_onload(void)
{
    if (&config != NULL && config.onload) {
        cweb_crash_context("onload", "");
        fflush(stdout);
        config.onload(&cweb_g_ctx);
        cweb_crash_context(NULL, NULL);
    }
    cweb_services_after_handler();
}

ABI void cweb_abi_unload(void)
{
    /* Deferred work queued by this version runs before its unload. */
    cweb_services_retire();
    if (&config != NULL && config.unload)
        config.unload(&cweb_g_ctx);
    fflush(stdout);
    fflush(stderr);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes %XX and '+' in place. */
static void url_decode(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (*s == '+') {
            *o++ = ' ';
        } else if (*s == '%' && hexval(s[1]) >= 0 && hexval(s[2]) >= 0) {
            *o++ = (char)(hexval(s[1]) * 16 + hexval(s[2]));
            s += 2;
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
}

/* Splits a copy of the query into params; the copy lives in qbuf. */
static void parse_query(const char *query, struct buf *qbuf, http_kv_store_t *params)
{
    size_t n = strlen(query);
    qbuf->len = 0;
    if (!n || buf_put(qbuf, query, n + 1) != 0)
        return;
    char *save = NULL;
    for (char *part = strtok_r(qbuf->p, "&", &save); part; part = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(part, '=');
        char *val = (char *)"";
        if (eq) {
            *eq = '\0';
            val = eq + 1;
        }
        url_decode(part);
        url_decode(val);
        http_kv_insert(params, part, val);
    }
}

/* A chunked body (RFC 9112 7.1): chunk-size [; extensions] CRLF, data,
 * CRLF, ..., then "0" CRLF, trailer fields, CRLF. 0 and the data in *out
 * (malloc'd, NUL-terminated); 1 when body ends before the last chunk and
 * trailers are complete; -1 when it is malformed. The server decodes
 * requests before a module sees them; this is for bodies a module fetches. */
int http_decode_chunked_body(const char *body, size_t body_len, char **out, size_t *out_len)
{
    if (!body || !out || !out_len)
        return -1;
    char *dec = malloc(body_len + 1);
    if (!dec)
        return -1;
    size_t n = 0, pos = 0;
    int rc = 1;
    for (;;) {
        const char *eol = memmem(body + pos, body_len - pos, "\r\n", 2);
        if (!eol)
            goto out;
        size_t line = (size_t)(eol - (body + pos)), i = 0, size = 0;
        for (; i < line && hexval(body[pos + i]) >= 0; i++) {
            if (size > (SIZE_MAX >> 4))
                goto bad;
            size = size * 16 + (size_t)hexval(body[pos + i]);
        }
        size_t digits = i;
        while (i < line && (body[pos + i] == ' ' || body[pos + i] == '\t'))
            i++;
        if (!digits || (i < line && body[pos + i] != ';'))
            goto bad;
        pos += line + 2;
        if (size == 0) {
            for (;;) {
                eol = memmem(body + pos, body_len - pos, "\r\n", 2);
                if (!eol)
                    goto out;
                size_t field = (size_t)(eol - (body + pos));
                if (field == 0) {
                    dec[n] = '\0';
                    *out = dec;
                    *out_len = n;
                    return 0;
                }
                if (!memchr(body + pos, ':', field))
                    goto bad;
                pos += field + 2;
            }
        }
        if (body_len - pos < size || body_len - pos - size < 2)
            goto out;
        memcpy(dec + n, body + pos, size);
        n += size;
        pos += size;
        if (body[pos] != '\r' || body[pos + 1] != '\n')
            goto bad;
        pos += 2;
    }
bad:
    rc = -1;
out:
    free(dec);
    return rc;
}

/* ------------------------------------------------------------------ */
/* the per-connection loop                                             */

struct conn {
    int fd;
    struct buf in, out, qbuf;
    http_kv_store_t params, headers, data, resp_headers;
    char *body;   /* HTTP_RESPONSE_SIZE + 1, for the connection's life */
};

/*
 * Response buffers. A handler may replace res->body the way c-web-modules'
 * own code does: free(res->body); res->body = malloc(n). So the glue must
 * see the module free the buffer it handed out: the build links every
 * artifact with --wrap=free,--wrap=realloc, which routes the module's (and
 * the glue's) free/realloc through these two. While a handler runs, t_body
 * is the connection's buffer. Freeing it only marks it: the connection keeps
 * it for its next request, so it is never freed twice, a pointer the module
 * kept still points at valid memory, and a malloc right after cannot return
 * the same address (which would make the module's new buffer look like the
 * connection's). realloc of it returns a fresh copy. Whatever else
 * res->body points to after the handler is the module's allocation and is
 * freed once sent.
 */
static __thread char *t_body;

void __real_free(void *p);
void *__real_realloc(void *p, size_t n);

void __wrap_free(void *p)
{
    if (p && p == t_body)
        return;
    __real_free(p);
}

void *__wrap_realloc(void *p, size_t n)
{
    if (!p || p != t_body)
        return __real_realloc(p, n);
    if (n == 0)
        return NULL;
    char *q = malloc(n);
    if (q)
        memcpy(q, p, n < HTTP_RESPONSE_SIZE + 1 ? n : HTTP_RESPONSE_SIZE + 1);
    return q;
}

char *http_response_alloc(http_response_t *res, size_t len)
{
    if (!res || len > host.max_response)
        return NULL;
    char *p = malloc(len + 1);
    if (!p)
        return NULL;
    p[len] = '\0';
    /* The preallocated buffer stays owned by the connection. */
    res->body = p;
    res->content_length = (int)len;
    return p;
}

static int send_error_response(struct conn *c, int code, const char *msg)
{
    char body[512];
    int n = snprintf(body, sizeof(body), "{\"error\":\"module_error\",\"message\":\"%s\"}", msg);
    c->out.len = 0;
    put_u8(&c->out, CWEB_F_HTTP_RESP);
    put_u8(&c->out, 0);
    put_u16(&c->out, (uint16_t)code);
    put_u32(&c->out, 1);
    put_str(&c->out, "content-type", 12);
    put_str(&c->out, "application/json", 16);
    put_u32(&c->out, (uint32_t)n);
    return send_frame(c->fd, &c->out, body, (size_t)n + 1);
}

static int handle_http(struct conn *c, struct reader *r)
{
    http_request_t req;
    http_response_t res;
    memset(&req, 0, sizeof(req));
    memset(&res, 0, sizeof(res));

    uint8_t method = get_u8(r);
    uint16_t route = get_u16(r);
    size_t body_len = 0;
    req.path = get_str(r, NULL);
    req.query = get_str(r, NULL);
    req.body = get_str(r, &body_len);
    kv_clear(&c->params, 0);
    kv_clear(&c->headers, 0);
    kv_clear(&c->data, 0);
    if (get_kv(r, &c->headers) != 0 || get_kv(r, &c->data) != 0 || r->bad)
        return -1;
    parse_query(req.query, &c->qbuf, &c->params);
    req.method = method < CWEB_METHOD_COUNT ? (http_method_t)method : HTTP_ERR;
    req.method_name = method < CWEB_METHOD_COUNT ? http_methods[method] : "";
    req.version = HTTP_VERSION_1_1;
    req.content_length = (int)body_len;
    req.keep_alive = 1;
    req.tid = pthread_self();
    req.params = &c->params;
    req.headers = &c->headers;
    req.data = &c->data;

    if (&config == NULL || route >= config.size || route >= MAX_ROUTES || !config.routes[route].handler)
        return send_error_response(c, 500, "route not found in module");

    kv_clear(&c->resp_headers, 1);
    c->body[0] = '\0';
    res.body = c->body;
    res.headers = &c->resp_headers;
    res.status = HTTP_200_OK;

    t_body = c->body;
    cweb_crash_context(config.routes[route].method, config.routes[route].path);
    config.routes[route].handler(&cweb_g_ctx, &req, &res);
    cweb_crash_context(NULL, NULL);
    t_body = NULL;
    cweb_services_after_handler();

    /* Ours: the connection's buffer (freed by the module or not, it is
     * intact); anything else is the module's. */
    int ours = res.body == c->body;
    size_t blen;
    if (ours) {
        blen = res.content_length > 0 ? (size_t)res.content_length : strnlen(c->body, HTTP_RESPONSE_SIZE);
        if (blen > HTTP_RESPONSE_SIZE)
            blen = HTTP_RESPONSE_SIZE;
    } else if (res.body) {
        blen = res.content_length > 0 ? (size_t)res.content_length : strlen(res.body);
    } else {
        blen = 0;
    }

    int rc;
    if (blen > host.max_response) {
        rc = send_error_response(c, 500, "response body exceeds the server limit");
    } else {
        c->out.len = 0;
        put_u8(&c->out, CWEB_F_HTTP_RESP);
        put_u8(&c->out, 0);
        put_u16(&c->out, (uint16_t)numeric_status(&res));
        put_u32(&c->out, (uint32_t)c->resp_headers.size);
        for (size_t i = 0; i < c->resp_headers.size; i++) {
            const char *k = c->resp_headers.entries[i].key;
            const char *v = c->resp_headers.entries[i].value ? c->resp_headers.entries[i].value : "";
            put_str(&c->out, k, strlen(k));
            put_str(&c->out, v, strlen(v));
        }
        put_u32(&c->out, (uint32_t)blen);
        /* The trailing NUL of the body string travels in the body part. */
        static const char nul = 0;
        const char *payload = ours ? c->body : res.body ? res.body : "";
        uint32_t total = (uint32_t)(c->out.len + blen + 1);
        struct iovec iov[4] = {
            {&total, 4}, {c->out.p, c->out.len}, {(void *)payload, blen}, {(void *)&nul, 1},
        };
        rc = write_all_iov(c->fd, iov, 4);
    }
    if (!ours)
        free(res.body);
    kv_clear(&c->resp_headers, 1);
    return rc;
}

#define READ_BUFFER_BYTES (64 * 1024)

/* Serves one connection until the peer closes it. Called from a worker
 * thread through ctypes with the GIL released. */
ABI int cweb_abi_serve(int fd)
{
    struct conn c;
    memset(&c, 0, sizeof(c));
    c.fd = fd;
    c.headers.nocase = 1;
    c.body = malloc(HTTP_RESPONSE_SIZE + 1);
    struct rbuf rb = {malloc(READ_BUFFER_BYTES), 0, 0, READ_BUFFER_BYTES};
    if (!c.body || !rb.p) {
        free(c.body);
        free(rb.p);
        return -1;
    }

    int rc = 0;
    for (;;) {
        uint32_t len;
        if (rbuf_read(fd, &rb, &len, 4) != 0)
            break;
        c.in.len = 0;
        if (buf_reserve(&c.in, (size_t)len + 1) != 0 || rbuf_read(fd, &rb, c.in.p, len) != 0) {
            rc = -1;
            break;
        }
        c.in.len = len;
        struct reader r = {c.in.p, c.in.p + len, 0};
        uint8_t type = get_u8(&r);
        int hrc;
        switch (type) {
        case CWEB_F_HTTP:
            hrc = handle_http(&c, &r);
            break;
        case CWEB_F_WS_OPEN:
        case CWEB_F_WS_MSG:
        case CWEB_F_WS_CLOSE:
            hrc = cweb_ws_frame(fd, type, &r, &c.out);
            break;
        case CWEB_F_JOB_RUN:
            hrc = cweb_job_run(fd, &r, &c.out);
            break;
        case CWEB_F_EVENTS:
            cweb_events_attach(fd);
            hrc = 0;
            break;
        case CWEB_F_JOB_CANCEL:
        case CWEB_F_REPLY:
            hrc = cweb_events_frame(type, &r);
            break;
        default:
            hrc = -1;
        }
        if (hrc != 0) {
            rc = -1;
            break;
        }
    }
    cweb_events_detach(fd);
    free(rb.p);
    free(c.body);
    free(c.in.p);
    free(c.out.p);
    free(c.qbuf.p);
    kv_clear(&c.params, 0);
    kv_clear(&c.headers, 0);
    kv_clear(&c.data, 0);
    kv_clear(&c.resp_headers, 1);
    free(c.params.entries);
    free(c.headers.entries);
    free(c.data.entries);
    free(c.resp_headers.entries);
    return rc;
}
