/*
 * cweb.h - the cweb module SDK.
 *
 * Source-compatible with modules written for c-web-modules: the same type
 * names, fields and functions. Layouts are cweb's own; a module is always
 * compiled against this header, never linked against another host's.
 *
 * Reference: docs/SDK.md in the cweb repository (also served as /sdk).
 */
#ifndef CWEB_H
#define CWEB_H

/* Transitive includes that c-web-modules' modules rely on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stddef.h>
#include <ctype.h>
#include <pthread.h>
#include <regex.h>
#include <sys/types.h>
#include <jansson.h>
#include <sqlite3.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/bio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever the flat entry ABI between the glue and the runtime changes. */
#define CWEB_ABI_VERSION 1

/* Limits are at least as large as c-web-modules' (10 each). */
#define MAX_ROUTES 64
#define MAX_WEBSOCKETS 32
#define MAX_JOBS 32

/* Size of the preallocated response body buffer. Larger bodies: see
 * http_response_alloc() below. */
#define HTTP_RESPONSE_SIZE (16 * 1024)
#define HTTP_VERSION "HTTP/1.1"

#define export __attribute__((visibility("default")))

/* ---- key/value stores (query params, headers, form data) ---- */

typedef struct http_kv_pair {
    char *key;
    char *value;
} http_kv_pair_t;

typedef struct http_kv_store {
    http_kv_pair_t *entries;
    size_t size;
    size_t capacity;
    int nocase;     /* header stores compare keys case-insensitively */
} http_kv_store_t;

http_kv_store_t *http_kv_create(size_t initial_capacity);
void http_kv_destroy(http_kv_store_t *store, int free_values);
/* Takes ownership of value, which must come from malloc (e.g. strdup). */
int http_kv_insert(http_kv_store_t *store, const char *key, char *value);
char *http_kv_get(const http_kv_store_t *store, const char *key);
size_t http_kv_size(const http_kv_store_t *store);

/* Older c-web-modules spelling: copies value, so literals are fine. */
int map_insert(http_kv_store_t *store, const char *key, const char *value);
char *map_get(const http_kv_store_t *store, const char *key);

/* ---- HTTP ---- */

typedef enum http_version {
    HTTP_VERSION_1_0,
    HTTP_VERSION_1_1,
} http_version_t;

typedef enum http_method {
    HTTP_ERR = -1,
    HTTP_GET,
    HTTP_POST,
    HTTP_PUT,
    HTTP_DELETE,
    HTTP_OPTIONS,
    HTTP_PATCH,
    HTTP_HEAD,
} http_method_t;
extern const char *http_methods[];

/* Symbolic statuses; the host maps each to its numeric code. */
typedef enum http_error {
    HTTP_000_UNKNOWN,
    HTTP_101_SWITCHING_PROTOCOLS,
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_202_ACCEPTED,
    HTTP_204_NO_CONTENT,
    HTTP_301_MOVED_PERMANENTLY,
    HTTP_302_FOUND,
    HTTP_303_SEE_OTHER,
    HTTP_304_NOT_MODIFIED,
    HTTP_307_TEMPORARY_REDIRECT,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_405_METHOD_NOT_ALLOWED,
    HTTP_409_CONFLICT,
    HTTP_413_PAYLOAD_TOO_LARGE,
    HTTP_414_URI_TOO_LONG,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_501_NOT_IMPLEMENTED,
    HTTP_502_BAD_GATEWAY,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_504_GATEWAY_TIMEOUT,
    HTTP_STATUS_COUNT_
} http_error_t;
extern const char *http_errors[];

typedef struct http_request {
    http_method_t method;
    http_version_t version;
    http_error_t status;
    char *path;
    char *body;                 /* NUL-terminated; may hold binary, see content_length */
    int content_length;
    char keep_alive;
    char close;
    pthread_t tid;
    http_kv_store_t *params;    /* query string */
    http_kv_store_t *headers;   /* lower-case names; lookups ignore case */
    http_kv_store_t *data;      /* urlencoded or multipart form fields */
    int websocket;
    const char *query;          /* raw query string, "" when none */
    const char *method_name;    /* "GET", "POST", ... */
} http_request_t;

typedef struct http_response {
    http_error_t status;
    http_kv_store_t *headers;
    char *body;                 /* HTTP_RESPONSE_SIZE bytes, preallocated */
    int content_length;         /* 0 means strlen(body) */
    int status_code;            /* if non-zero, sent as is and overrides status */
} http_response_t;

/*
 * Bodies larger than HTTP_RESPONSE_SIZE: returns a buffer of len bytes that
 * replaces res->body and sets res->content_length = len. The host frees it.
 * NULL when len exceeds the server's response limit (16 MiB by default).
 * Equivalently, a module may assign its own malloc'd buffer to res->body
 * and set content_length; the host then frees that buffer.
 */
char *http_response_alloc(http_response_t *res, size_t len);

/* ---- WebSockets ---- */

typedef struct websocket {
    char *session;
    int client_fd;              /* not a real socket in cweb: a connection id */
    int (*send)(struct websocket *ws, const char *message, size_t length);
    int (*close)(struct websocket *ws);
    /* cweb additions */
    uint64_t id;                /* unique per connection for its whole life */
    int binary;                 /* the message being delivered was a binary frame */
    int (*send_binary)(struct websocket *ws, const void *data, size_t length);
    void *user_data;            /* free for the module */
} websocket_t;

/* ---- UUIDs (jobs) ---- */

#define UUID_STR_LEN 37
typedef struct cweb_uuid {
    char str[UUID_STR_LEN];
} cweb_uuid_t;
const char *uuid_c_str(const cweb_uuid_t *uuid);
#ifndef CWEB_NO_UUID_T
typedef cweb_uuid_t uuid_t;     /* c-web-modules' name for the same type */
#endif

/* ---- Context services ---- */

/* Pointer sharing inside one module's worker process. */
struct container;
int container_set(struct container *c, const char *name, void *value);
void *container_get(struct container *c, const char *name);
int container_remove(struct container *c, const char *name);

typedef void (*work_t)(void *);
typedef enum { ASYNC, SYNC } worker_state_t;
struct scheduler;
int scheduler_add(struct scheduler *s, work_t work, void *data, worker_state_t state);

struct sqldb {
    sqlite3 *db;
    int (*exec)(const char *, int (*)(void *, int, char **, char **), void *);
    int (*prepare)(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);
    int (*step)(sqlite3_stmt *);
    int (*finalize)(sqlite3_stmt *);
    int (*bind_text)(sqlite3_stmt *, int, const char *, int, void (*)(void *));
    int (*bind_int)(sqlite3_stmt *, int, int);
    const char *(*column_text)(sqlite3_stmt *, int);
    int (*column_int)(sqlite3_stmt *, int);
    int (*column_count)(sqlite3_stmt *);
    int (*reset)(sqlite3_stmt *);
    int (*changes)(sqlite3 *);
    int (*last_insert_rowid)(sqlite3 *);
    void (*free)(void *);
};

struct crypto_ops {
    int (*sign_token)(const char *token, char *signed_token, unsigned int signed_token_len);
    int (*verify_token)(const char *signed_token, char *token, size_t token_len);
};

struct crypto {
    void *ctx;
    int status;
    struct crypto_ops *ops;
};

struct symbols {
    void *user_data;
    void *(*resolv)(void *user_data, const char *module, const char *symbol);
};

struct job_system;

typedef struct cweb_context {
    struct container *cache;
    struct scheduler *scheduler;
    struct sqldb *database;
    struct crypto *crypto;
    struct symbols *symbols;
    struct job_system *jobs;
} cweb_context_t;

/* Cross-module cache: bytes in, bytes out, shared by every module of a server. */
int cweb_cache_set(struct cweb_context *ctx, const char *key, const void *data, size_t len, int ttl_seconds);
ssize_t cweb_cache_get(struct cweb_context *ctx, const char *key, void *buf, size_t cap);
int cweb_cache_del(struct cweb_context *ctx, const char *key);

/* Run fn(data) on this module's worker after delay_ms. */
int cweb_schedule_after(struct cweb_context *ctx, unsigned delay_ms, work_t fn, void *data);

/* ---- Module declaration ---- */

typedef int (*entry_t)(struct cweb_context *, http_request_t *, http_response_t *);

typedef enum {
    NONE = 0,
} cweb_feature_flag_t;
#define FEATURE_FLAG_NONE NONE

typedef struct ws_info {
    const char *path;
    void (*on_open)(struct cweb_context *, websocket_t *);
    void (*on_message)(struct cweb_context *, websocket_t *, const char *message, size_t length);
    void (*on_close)(struct cweb_context *, websocket_t *);
} websocket_info_t;

/* Jobs: see docs/JOBS.md. */

typedef struct job_payload {
    const char *json;           /* the payload, a JSON object, NUL-terminated */
    size_t json_len;
} job_payload_t;

/* Valid only while run() executes, on its thread. */
typedef struct job_ctx {
    const char *job_uuid;
    /* A stored, streamed event; data_json should be JSON (NULL: null). */
    int (*emit_event)(struct job_ctx *job, const char *type, const char *data_json);
    /* The result (JSON text). The last of set_result / set_error wins. */
    int (*set_result)(struct job_ctx *job, const char *result_json);
    /* The error message: the attempt fails, whatever run() returns. */
    int (*set_error)(struct job_ctx *job, const char *error_text);
    /* cweb additions (appended only) */
    int (*is_canceled)(struct job_ctx *job);   /* non-zero once asked to stop */
    int (*progress)(struct job_ctx *job, double done, double total);  /* a "progress" event */
    int attempt;                /* 1, then 2 on the first retry, ... */
    void *host_;
} job_ctx_t;

/* Return 0 on success (after set_result, or with no result: null), -1 after
 * set_error. Non-zero without set_error also fails the attempt. */
typedef int (*job_run_t)(struct cweb_context *ctx, const job_payload_t *payload, job_ctx_t *job);

typedef struct job_info {
    const char *name;
    job_run_t run;
    /* Optional: called once, on another thread, when a running attempt is canceled. */
    void (*cancel)(struct cweb_context *ctx, const char *job_uuid);
} job_info_t;

typedef struct route_info {
    const char *path;
    const char *method;
    entry_t handler;
    int flags;
} route_info_t;

typedef struct module {
    char name[128];
    char author[128];
    route_info_t routes[MAX_ROUTES];
    int size;
    websocket_info_t websockets[MAX_WEBSOCKETS];
    int ws_size;
    job_info_t jobs[MAX_JOBS];
    int job_size;
    void (*onload)(struct cweb_context *);
    void (*unload)(struct cweb_context *);
} module_t;

/* Start a job, durably, as POST /jobs would: job_name resolves in this
 * module first, then to the single active module that defines it;
 * payload_json is a JSON object (NULL: {}). Returns 0 and fills
 * job_uuid_out (may be NULL), or -1: unknown or ambiguous name, bad payload,
 * no answer within 10 s, or called from onload (the channel to the server
 * opens only after onload returns). Blocks the calling thread meanwhile. */
int jobs_create(const char *job_name, const char *payload_json, cweb_uuid_t *job_uuid_out);

#ifdef __cplusplus
}
#endif

#endif /* CWEB_H */
