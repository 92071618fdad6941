/*
 * workloads.c - the cweb side of the benchmark suite.
 *
 * Every route does the same work as the matching function of baseline.c,
 * which the FastAPI baseline calls through ctypes; the kernels below are
 * kept identical to that file's on purpose.
 *
 *   GET  /b/trivial  "ok"
 *   GET  /b/sha256   hex SHA-256 (OpenSSL EVP) of a fixed 64 KiB buffer
 *   GET  /b/compute  a calibrated ~1 ms integer loop, its result in hex
 *   GET  /b/big      a 1 MiB body (http_response_alloc)
 *   POST /b/upload   the length of the request body, in decimal
 *   GET  /b/tag      BENCH_TAG: tells deployed versions apart
 *
 * bench/run.py prepends `#define BENCH_COMPUTE_ITERS n` (the calibrated
 * count) and, for deploy timings and hot swaps, `#define BENCH_TAG "..."`,
 * which makes each variant a different artifact.
 */
#include <cweb.h>

#ifndef BENCH_TAG
#define BENCH_TAG "bench"
#endif
#ifndef BENCH_COMPUTE_ITERS
#define BENCH_COMPUTE_ITERS 1000000ULL
#endif

#define SHA_INPUT_BYTES (64 * 1024)
#define BIG_BODY_BYTES (1024 * 1024)

static unsigned char sha_input[SHA_INPUT_BYTES];
static unsigned char big_body[BIG_BODY_BYTES];

/* Same kernel as baseline.c: xorshift64, a dependent chain the compiler
 * cannot fold or vectorise. */
static uint64_t spin(uint64_t n)
{
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

static void fill_pattern(unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)('a' + (i * 31 + 7) % 26);
}

static void hex(const unsigned char *digest, unsigned int len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (unsigned int i = 0; i < len; i++) {
        out[2 * i] = digits[digest[i] >> 4];
        out[2 * i + 1] = digits[digest[i] & 15];
    }
    out[2 * len] = '\0';
}

static void text(http_response_t *res)
{
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
    res->status = HTTP_200_OK;
}

static int trivial(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    (void)req;
    memcpy(res->body, "ok", 3);
    text(res);
    return 0;
}

static int sha256(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    (void)req;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!EVP_Digest(sha_input, sizeof sha_input, digest, &len, EVP_sha256(), NULL)) {
        res->status = HTTP_500_INTERNAL_SERVER_ERROR;
        return 0;
    }
    hex(digest, len, res->body);
    text(res);
    return 0;
}

static int compute(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%016llx", (unsigned long long)spin(BENCH_COMPUTE_ITERS));
    text(res);
    return 0;
}

static int big(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    (void)req;
    char *body = http_response_alloc(res, sizeof big_body);
    if (body == NULL) {
        res->status = HTTP_500_INTERNAL_SERVER_ERROR;
        return 0;
    }
    memcpy(body, big_body, sizeof big_body);
    http_kv_insert(res->headers, "Content-Type", strdup("application/octet-stream"));
    res->status = HTTP_200_OK;
    return 0;
}

static int upload(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%d", req->content_length);
    text(res);
    return 0;
}

static int tag(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", BENCH_TAG);
    text(res);
    return 0;
}

static void onload(struct cweb_context *ctx)
{
    (void)ctx;
    fill_pattern(sha_input, sizeof sha_input);
    fill_pattern(big_body, sizeof big_body);
}

export module_t config = {
    .name = "bench",
    .author = "cweb bench",
    .routes = {
        {"/b/trivial", "GET", trivial, NONE},
        {"/b/sha256", "GET", sha256, NONE},
        {"/b/compute", "GET", compute, NONE},
        {"/b/big", "GET", big, NONE},
        {"/b/upload", "POST", upload, NONE},
        {"/b/tag", "GET", tag, NONE},
    },
    .size = 6,
    .onload = onload,
};
