/*
 * job_hash.c - a long-running, streaming, cancelable compute job.
 *
 * Job "sha256": payload {"text": T, "repeat": R, "chunk": C} hashes T
 * repeated R times (R defaults to 1) with SHA-256. The work is done C
 * repetitions at a time (default: about a hundredth of R); after each chunk
 * the job reports progress in bytes and checks whether it was canceled.
 * Result: {"sha256": "<hex digest>", "bytes": <bytes hashed>}.
 *
 * GET /job_hash/info says how to start it.
 */
#include <cweb.h>

static int fail(job_ctx_t *job, const char *why)
{
    job->set_error(job, why);
    return -1;
}

static void report_progress(job_ctx_t *job, uint64_t done, uint64_t total)
{
    /* progress() is a cweb addition; older hosts only have emit_event(). */
    if (job->progress) {
        job->progress(job, (double)done, (double)total);
        return;
    }
    char data[96];
    snprintf(data, sizeof(data), "{\"done\": %llu, \"total\": %llu}",
             (unsigned long long)done, (unsigned long long)total);
    job->emit_event(job, "progress", data);
}

static int canceled(job_ctx_t *job)
{
    return job->is_canceled && job->is_canceled(job);
}

/* Reads an optional positive integer field; returns 0 when it is valid. */
static int positive_field(json_t *root, const char *key, uint64_t fallback, uint64_t *out)
{
    json_t *v = json_object_get(root, key);
    if (!v) {
        *out = fallback;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 1)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int run_sha256(struct cweb_context *ctx, const job_payload_t *payload, job_ctx_t *job)
{
    (void)ctx;
    json_error_t err;
    json_t *root = json_loadb(payload->json, payload->json_len, 0, &err);
    json_t *text_value = root ? json_object_get(root, "text") : NULL;
    if (!json_is_string(text_value)) {
        json_decref(root);
        return fail(job, "payload must have a string field \"text\"");
    }

    uint64_t repeat, chunk;
    if (positive_field(root, "repeat", 1, &repeat) != 0) {
        json_decref(root);
        return fail(job, "\"repeat\" must be a positive integer");
    }
    if (positive_field(root, "chunk", repeat / 100 ? repeat / 100 : 1, &chunk) != 0) {
        json_decref(root);
        return fail(job, "\"chunk\" must be a positive integer");
    }

    /* Copy the text out so the JSON tree can go; it may contain NULs. */
    size_t len = json_string_length(text_value);
    char *text = malloc(len + 1);
    if (!text) {
        json_decref(root);
        return fail(job, "out of memory");
    }
    memcpy(text, json_string_value(text_value), len + 1);
    json_decref(root);

    uint64_t total;
    if (__builtin_mul_overflow((uint64_t)len, repeat, &total)) {
        free(text);
        return fail(job, "text x repeat is too many bytes");
    }

    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        free(text);
        return fail(job, "cannot initialise SHA-256");
    }

    uint64_t rounds = 0;
    int rc = 0;
    report_progress(job, 0, total);
    while (rounds < repeat) {
        uint64_t end = repeat - rounds < chunk ? repeat : rounds + chunk;
        for (; rounds < end; rounds++)
            EVP_DigestUpdate(md, text, len);
        report_progress(job, rounds * len, total);
        if (rounds < repeat && canceled(job)) {
            rc = fail(job, "canceled");
            break;
        }
    }
    free(text);

    if (rc == 0) {
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned int digest_len = 0;
        if (EVP_DigestFinal_ex(md, digest, &digest_len) != 1) {
            rc = fail(job, "cannot finish SHA-256");
        } else {
            char hex[2 * EVP_MAX_MD_SIZE + 1];
            for (unsigned int i = 0; i < digest_len; i++)
                snprintf(hex + 2 * i, 3, "%02x", digest[i]);
            char result[256];
            snprintf(result, sizeof(result), "{\"sha256\": \"%s\", \"bytes\": %llu}",
                     hex, (unsigned long long)total);
            job->set_result(job, result);
        }
    }
    EVP_MD_CTX_free(md);
    return rc;
}

static int info(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    (void)req;
    snprintf(res->body, HTTP_RESPONSE_SIZE,
             "job_hash: SHA-256 of a text repeated many times, as a cancelable job.\n"
             "Start it with POST /jobs {\"module\": \"job_hash\", \"job\": \"sha256\", "
             "\"payload\": {\"text\": \"abc\", \"repeat\": 1000000, \"chunk\": 10000}}\n");
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain; charset=utf-8"));
    res->status = HTTP_200_OK;
    return 0;
}

export module_t config = {
    .name = "job_hash",
    .author = "cweb",
    .routes = {
        {"/job_hash/info", "GET", info, NONE},
    },
    .size = 1,
    .jobs = {
        {"sha256", run_sha256, NULL},
    },
    .job_size = 1,
};
