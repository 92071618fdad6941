/*
 * counter.c - the smallest stateful module.
 *
 * GET /counter answers an HTML page "Counter: N" where N grows by one per
 * request. The count is module state: it lives in the module's worker and is
 * shared by every request, which may run on several threads at once, so it
 * is an atomic rather than a plain int.
 */
#include <cweb.h>
#include <stdatomic.h>

static atomic_uint_fast64_t hits;

static int counter_page(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    (void)req;
    /* fetch_add returns the old value, so the first visitor sees 1. */
    uint64_t n = atomic_fetch_add(&hits, 1) + 1;

    snprintf(res->body, HTTP_RESPONSE_SIZE,
             "<!doctype html>\n"
             "<html><head><title>Counter</title></head>\n"
             "<body><h1>Counter: %llu</h1></body></html>\n",
             (unsigned long long)n);
    http_kv_insert(res->headers, "Content-Type", strdup("text/html; charset=utf-8"));
    res->status = HTTP_200_OK;
    return 0;
}

export module_t config = {
    .name = "counter",
    .author = "cweb",
    .routes = {
        {"/counter", "GET", counter_page, NONE},
    },
    .size = 1,
};
