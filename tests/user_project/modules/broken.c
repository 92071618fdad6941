/* broken.c - does not compile: line 6 misses an expression. */
#include <cweb.h>

static int handler(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    int answer = ;
    (void)ctx; (void)req;
    res->status = HTTP_200_OK;
    return answer;
}
