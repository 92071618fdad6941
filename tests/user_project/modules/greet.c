/* greet.c - the module this sample project tests: GET /greet?name=X answers
 * "hello X" and logs each greeting to stdout. */
#include <cweb.h>

static int greet(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    const char *name = http_kv_get(req->params, "name");
    snprintf(res->body, HTTP_RESPONSE_SIZE, "hello %s", name ? name : "world");
    printf("greeted %s\n", name ? name : "world");
    fflush(stdout);
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    res->status = HTTP_200_OK;
    return 0;
}

export module_t config = {
    .name = "greet",
    .author = "sample",
    .routes = {
        {"/greet", "GET", greet, NONE},
    },
    .size = 1,
};
