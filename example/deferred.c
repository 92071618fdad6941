/*
 * deferred.c - work that runs after the response has been sent.
 *
 *   POST /deferred/now          the body is recorded by ASYNC work, on the
 *                               module's scheduler thread, after the route returned
 *   POST /deferred/later?ms=N   the body is recorded N ms from now
 *                               (cweb_schedule_after; default 1000 ms)
 *   GET  /deferred/log          what has been recorded so far, oldest first
 *
 * Each recorded body is also written to the cross-module cache under
 * "deferred:last", so other modules can see the latest one.
 *
 * A SYNC task prints a line to the module log after the recording (SYNC
 * work joins the same queue as ASYNC work, in order, as in c-web-modules). When this version is retired (a redeploy or DELETE /modules/deferred)
 * the work still queued, timed work included, runs before unload(), which
 * prints how much was recorded: nothing scheduled is lost by a hot swap.
 */
#include <cweb.h>
#include <stdatomic.h>

#define LOG_LINES 64
#define LINE_MAX_BYTES 200

static char log_lines[LOG_LINES][LINE_MAX_BYTES];
static int log_count;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int scheduled;

struct note {
    struct cweb_context *ctx;
    char how[8];
    char text[LINE_MAX_BYTES - 16];
};

/* Runs on a scheduler thread, never on the request's thread. */
static void record(void *arg)
{
    struct note *n = arg;
    pthread_mutex_lock(&log_lock);
    snprintf(log_lines[log_count % LOG_LINES], LINE_MAX_BYTES, "%s: %s", n->how, n->text);
    log_count++;
    pthread_mutex_unlock(&log_lock);
    cweb_cache_set(n->ctx, "deferred:last", n->text, strlen(n->text), 0);
    free(n);
}

static void said_after_response(void *arg)
{
    printf("deferred: response sent, %s work queued\n", (const char *)arg);
}

static struct note *note_from(struct cweb_context *ctx, http_request_t *req, const char *how)
{
    struct note *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->ctx = ctx;
    snprintf(n->how, sizeof(n->how), "%s", how);
    size_t len = req->content_length > 0 ? (size_t)req->content_length : 0;
    if (len >= sizeof(n->text))
        len = sizeof(n->text) - 1;
    memcpy(n->text, req->body, len);
    return n;
}

static void reply(http_response_t *res, http_error_t status, const char *text)
{
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s\n", text);
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    res->status = status;
}

static int now_route(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    struct note *n = note_from(ctx, req, "now");
    if (!n || scheduler_add(ctx->scheduler, record, n, ASYNC) != 0) {
        free(n);
        reply(res, HTTP_503_SERVICE_UNAVAILABLE, "the work queue is full; try again");
        return 0;
    }
    atomic_fetch_add(&scheduled, 1);
    scheduler_add(ctx->scheduler, said_after_response, "async", SYNC);
    reply(res, HTTP_202_ACCEPTED, "queued");
    return 0;
}

static int later_route(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    const char *ms_arg = http_kv_get(req->params, "ms");
    long ms = ms_arg ? strtol(ms_arg, NULL, 10) : 1000;
    if (ms < 0 || ms > 24L * 3600 * 1000) {
        reply(res, HTTP_400_BAD_REQUEST, "ms must be between 0 and 86400000");
        return 0;
    }
    struct note *n = note_from(ctx, req, "later");
    if (!n || cweb_schedule_after(ctx, (unsigned)ms, record, n) != 0) {
        free(n);
        reply(res, HTTP_503_SERVICE_UNAVAILABLE, "too many timers pending; try again");
        return 0;
    }
    atomic_fetch_add(&scheduled, 1);
    scheduler_add(ctx->scheduler, said_after_response, "timed", SYNC);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "scheduled in %ld ms\n", ms);
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    res->status = HTTP_202_ACCEPTED;
    return 0;
}

static int log_route(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    (void)req;
    size_t off = 0;
    pthread_mutex_lock(&log_lock);
    int first = log_count > LOG_LINES ? log_count - LOG_LINES : 0;
    for (int i = first; i < log_count && off < HTTP_RESPONSE_SIZE; i++)
        off += (size_t)snprintf(res->body + off, HTTP_RESPONSE_SIZE - off, "%s\n", log_lines[i % LOG_LINES]);
    pthread_mutex_unlock(&log_lock);
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    res->status = HTTP_200_OK;
    return 0;
}

static void on_unload(struct cweb_context *ctx)
{
    (void)ctx;
    /* Runs after the scheduler has drained: every scheduled note is recorded. */
    printf("deferred: unloading after %d scheduled, %d recorded\n", atomic_load(&scheduled), log_count);
}

export module_t config = {
    .name = "deferred",
    .author = "cweb",
    .routes = {
        {"/deferred/now", "POST", now_route, NONE},
        {"/deferred/later", "POST", later_route, NONE},
        {"/deferred/log", "GET", log_route, NONE},
    },
    .size = 3,
    .unload = on_unload,
};
