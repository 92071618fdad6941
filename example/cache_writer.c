/*
 * cache_writer.c - writes a value into the cross-module cache.
 *
 *   POST   /greeting?ttl=N   stores the request body under the cache key
 *                            "greeting", expiring after N seconds (0 or no
 *                            ttl: kept until evicted or the server restarts)
 *   DELETE /greeting         removes it
 *
 * Module cache_reader (cache_reader.c) reads the same key from its own
 * worker process: the cache is shared by every module of the server. The
 * value is bytes, copied in and out; no pointer crosses between modules.
 */
#include <cweb.h>

#define KEY "greeting"

static void reply(http_response_t *res, http_error_t status, const char *text)
{
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s\n", text);
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    res->status = status;
}

static int store_greeting(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    const char *ttl_arg = http_kv_get(req->params, "ttl");
    int ttl = ttl_arg ? atoi(ttl_arg) : 0;
    if (req->content_length <= 0) {
        reply(res, HTTP_400_BAD_REQUEST, "send the greeting as the request body");
        return 0;
    }
    if (ttl < 0) {
        reply(res, HTTP_400_BAD_REQUEST, "ttl must be >= 0 seconds");
        return 0;
    }
    if (cweb_cache_set(ctx, KEY, req->body, (size_t)req->content_length, ttl) != 0) {
        reply(res, HTTP_500_INTERNAL_SERVER_ERROR, "the cache refused the value");
        return 0;
    }
    snprintf(res->body, HTTP_RESPONSE_SIZE, "stored %d bytes under \"%s\" (ttl %d s)\n", req->content_length, KEY, ttl);
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    res->status = HTTP_201_CREATED;
    return 0;
}

static int forget_greeting(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)req;
    if (cweb_cache_del(ctx, KEY) == 0)
        reply(res, HTTP_200_OK, "deleted");
    else
        reply(res, HTTP_404_NOT_FOUND, "no greeting stored");
    return 0;
}

export module_t config = {
    .name = "cache_writer",
    .author = "cweb",
    .routes = {
        {"/greeting", "POST", store_greeting, NONE},
        {"/greeting", "DELETE", forget_greeting, NONE},
    },
    .size = 2,
};
