/*
 * cache_reader.c - reads what cache_writer.c stored in the cross-module cache.
 *
 *   GET /greeting   the value under the cache key "greeting", or 404
 *
 * This module runs in a different worker process from cache_writer; the
 * read is one round trip to the cache held by the cweb runtime (no memory
 * is shared between the two modules). cweb_cache_get() returns the value's full length and copies at
 * most cap bytes, so a value larger than the buffer is detected and fetched
 * again into a big enough one.
 */
#include <cweb.h>

#define KEY "greeting"

static int read_greeting(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)req;
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    ssize_t n = cweb_cache_get(ctx, KEY, res->body, HTTP_RESPONSE_SIZE);
    if (n < 0) {
        snprintf(res->body, HTTP_RESPONSE_SIZE, "no greeting yet: POST one to /greeting\n");
        res->status = HTTP_404_NOT_FOUND;
        return 0;
    }
    if ((size_t)n > HTTP_RESPONSE_SIZE) {
        /* Larger than the preallocated body: read it again into a bigger one. */
        char *big = http_response_alloc(res, (size_t)n);
        if (!big) {
            snprintf(res->body, HTTP_RESPONSE_SIZE, "the greeting is too large to send\n");
            res->status = HTTP_500_INTERNAL_SERVER_ERROR;
            return 0;
        }
        /* Another module may have changed it in between: send what is there now. */
        ssize_t again = cweb_cache_get(ctx, KEY, big, (size_t)n);
        big[0] = again < 0 ? '\0' : big[0];
        n = again < 0 ? 0 : (again < n ? again : n);
    }
    res->content_length = (int)n;
    res->status = HTTP_200_OK;
    return 0;
}

export module_t config = {
    .name = "cache_reader",
    .author = "cweb",
    .routes = {
        {"/greeting", "GET", read_greeting, NONE},
    },
    .size = 1,
};
