/*
 * job_sum.c - the smallest durable job.
 *
 * Job "sum": payload {"n": N} -> result {"n": N, "sum": 1 + 2 + ... + N}.
 * Start it with POST /jobs {"module": "job_sum", "job": "sum",
 * "payload": {"n": 100}}.
 */
#include <cweb.h>

static int run_sum(struct cweb_context *ctx, const job_payload_t *payload, job_ctx_t *job)
{
    (void)ctx;
    json_error_t err;
    json_t *root = json_loadb(payload->json, payload->json_len, 0, &err);
    json_t *n_value = root ? json_object_get(root, "n") : NULL;
    if (!json_is_integer(n_value) || json_integer_value(n_value) < 0) {
        json_decref(root);
        job->set_error(job, "payload must be {\"n\": N} with N a non-negative integer");
        return -1;
    }
    uint64_t n = (uint64_t)json_integer_value(n_value);
    json_decref(root);

    /* Gauss's n(n+1)/2, halving whichever factor is even first so the
     * product only overflows when the sum itself does not fit. */
    uint64_t a = n, b = n + 1, sum;
    if (a % 2 == 0)
        a /= 2;
    else
        b /= 2;
    if (__builtin_mul_overflow(a, b, &sum)) {
        job->set_error(job, "n is too large: the sum does not fit in 64 bits");
        return -1;
    }

    /* Formatted by hand: sums above INT64_MAX do not fit a json_int_t. */
    char result[96];
    snprintf(result, sizeof(result), "{\"n\": %llu, \"sum\": %llu}",
             (unsigned long long)n, (unsigned long long)sum);
    job->set_result(job, result);
    return 0;
}

export module_t config = {
    .name = "job_sum",
    .author = "cweb",
    .jobs = {
        {"sum", run_sum, NULL},
    },
    .job_size = 1,
};
