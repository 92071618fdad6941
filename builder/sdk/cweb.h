/*
 * cweb.h - the cweb module SDK.
 *
 * Source-compatible with modules written for c-web-modules (its headers at
 * commit a4a06d9): the same type names, fields, enum values and functions,
 * except where docs/SDK.md lists a difference. Layouts are cweb's own; a
 * module is always compiled against this header, never linked against
 * another host's. The original's individual headers (<http.h>, <map.h>,
 * <scheduler.h>, ...) are shipped too and all lead here.
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
#ifndef __cplusplus
#include <stdatomic.h>   /* c-web-modules' scheduler.h brings it in */
#endif
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

/* A c-web-modules function that cannot exist in cweb: calling it is a
 * compile error that names it and says why (docs/SDK.md, "Symbols"). */
#define CWEB_UNAVAILABLE(why) __attribute__((error("not available in cweb: " why)))
/* Compiles and works, but not as it did in c-web-modules: the build (and
 * so the deploy answer's warnings) says how. */
#define CWEB_DIFFERS(why) __attribute__((deprecated("in cweb " why)))

/* c-web-modules' cweb_config.h. The limits a module sees are cweb's; the
 * server-side ones describe cweb's defaults and are informational. */
#define ROUTER_MAX_MODULES 100
#define SO_PATH_MAX_LEN 256
#define DEFAULT_MAX_BODY_BYTES (8 * 1024 * 1024)   /* CWEB_MAX_BODY_BYTES */
#define REQUEST_BUFFER_SIZE (DEFAULT_MAX_BODY_BYTES + (16 * 1024))
#define DEFAULT_PORT 8080                         /* CWEB_PORT */
#define DEFAULT_DEV_THREAD_POOL_SIZE 8            /* CWEB_WORKER_THREADS */
#define DEFAULT_PROD_THREAD_POOL_MULTIPLIER 1

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

/* A secret of this module, set with `cweb secret put NAME KEY` (PUT
 * /modules/NAME/secrets/KEY): its value, or NULL when there is no such
 * key. Set before onload, valid for the worker's life, the same for every
 * thread; a changed secret reaches workers started after the change (the
 * next deploy, rollback or restart). Never print it: module output is
 * readable by whoever can read the module's logs. */
const char *cweb_secret(const char *key);
size_t http_kv_size(const http_kv_store_t *store);

/* ---- struct map: c-web-modules' string-keyed hash map (map.h) ---- */

typedef enum map_error {
    MAP_OK = 0,
    MAP_ERR = 1,
    MAP_FULL = 2,
    MAP_KEY_NOT_FOUND = 3,
} map_error_t;

typedef enum map_entry_state {
    MAP_ENTRY_EMPTY = 0,
    MAP_ENTRY_OCCUPIED = 1,
    MAP_ENTRY_TOMBSTONE = 2,
} map_entry_state_t;

struct map_entry {
    char *key;                  /* a copy, owned by the map */
    void *value;                /* the caller's pointer, never freed by the map */
    uint64_t hash;
    map_entry_state_t state;
};

struct map {
    struct map_entry *entries;
    size_t size;
    size_t capacity;
    size_t tombstones;
};

struct map *map_create(size_t initial_capacity);
void map_destroy(struct map *map);
map_error_t map_insert(struct map *map, const char *key, void *value);
void *map_get(const struct map *map, const char *key);
map_error_t map_remove(struct map *map, const char *key);
size_t map_size(const struct map *map);

/*
 * An older c-web-modules revision named the header store's insert/get
 * map_insert/map_get (insert copying the value). Both spellings compile:
 * on a struct map (or a void pointer, NULL included) the calls are the ones
 * above, on an http_kv_store_t these. (&map_insert is the struct map one.)
 */
int cweb_kv_map_insert(http_kv_store_t *store, const char *key, const char *value);
char *cweb_kv_map_get(const http_kv_store_t *store, const char *key);
#ifndef __cplusplus
#define map_insert(m, k, v) \
    _Generic((m), struct map *: map_insert, void *: map_insert, default: cweb_kv_map_insert)((m), (k), (v))
#define map_get(m, k) \
    _Generic((m), struct map *: map_get, const struct map *: map_get, void *: map_get, default: cweb_kv_map_get)((m), (k))
#endif

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
    HTTP_PATCH,                 /* cweb additions */
    HTTP_HEAD,
} http_method_t;
extern const char *http_methods[];

/* Symbolic statuses; the host maps each to its numeric code. The first
 * fifteen have c-web-modules' values (HTTP_000_UNKNOWN answers 400 there and
 * here); cweb's additions come after them. */
typedef enum http_error {
    HTTP_000_UNKNOWN,
    HTTP_101_SWITCHING_PROTOCOLS,
    HTTP_200_OK,
    HTTP_302_FOUND,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_405_METHOD_NOT_ALLOWED,
    HTTP_409_CONFLICT,
    HTTP_413_PAYLOAD_TOO_LARGE,
    HTTP_414_URI_TOO_LONG,
    HTTP_426_UPGRADE_REQUIRED,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_501_NOT_IMPLEMENTED,
    /* cweb additions */
    HTTP_201_CREATED,
    HTTP_202_ACCEPTED,
    HTTP_204_NO_CONTENT,
    HTTP_301_MOVED_PERMANENTLY,
    HTTP_303_SEE_OTHER,
    HTTP_304_NOT_MODIFIED,
    HTTP_307_TEMPORARY_REDIRECT,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
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
    int transfer_encoding_chunked;  /* always 0: the server has decoded a chunked body */
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

/* c-web-modules' parser entry points. The server parses requests before a
 * module sees them; what a module can still use works on the parsed request. */
int http_parse(const char *request, size_t request_len, http_request_t *req)
    CWEB_UNAVAILABLE("http_parse: the server parses the request before the module sees it; use the http_request_t the handler receives");
/* req->data is already filled from a urlencoded or multipart body: returns 0. */
int http_parse_data(http_request_t *req);
/* 1 when the request asks for a WebSocket upgrade (Upgrade: websocket and
 * Connection: upgrade), else 0. Module routes never receive one: cweb
 * answers upgrades on the paths a module declares in .websockets. */
int http_is_websocket_upgrade(http_request_t *req);
/* Decodes a chunked body into *out (malloc'd): 0, 1 when incomplete, -1 when
 * malformed. req->body never needs it: the server has decoded it already. */
int http_decode_chunked_body(const char *body, size_t body_len, char **out, size_t *out_len);

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
void uuid_clear(cweb_uuid_t *uuid);
/* 0 and a copy when str is a canonical 8-4-4-4-12 hex UUID, else -1. */
int uuid_from_string(cweb_uuid_t *uuid, const char *str);
int uuid_is_valid(const cweb_uuid_t *uuid);
int uuid_equal(const cweb_uuid_t *a, const cweb_uuid_t *b);
const char *uuid_c_str(const cweb_uuid_t *uuid);
#ifndef CWEB_NO_UUID_T
typedef cweb_uuid_t uuid_t;     /* c-web-modules' name for the same type */
#endif

/* ---- Context services ---- */

/*
 * ctx->cache: c-web-modules' container, a pointer store. There every module
 * shares one; in cweb each module has its own worker process, so it holds
 * this module's pointers only (cweb_cache_* shares bytes between modules).
 */
struct container {
    struct map *data;
    pthread_mutex_t mutex;
};
int container_init(struct container *container, size_t initial_capacity);
void container_shutdown(struct container *container);
map_error_t container_set(struct container *container, const char *name, void *value)
    CWEB_DIFFERS("ctx->cache is per module: each module runs in its own process, so other modules never see these pointers (share bytes with cweb_cache_set)");
void *container_get(struct container *container, const char *name)
    CWEB_DIFFERS("ctx->cache is per module: each module runs in its own process, so this finds only pointers this module stored (share bytes with cweb_cache_get)");
map_error_t container_remove(struct container *container, const char *name);

/*
 * ctx->scheduler: c-web-modules' scheduler. One thread per scheduler runs
 * the queued work one item at a time, in the order it was added, ASYNC and
 * SYNC alike (the original ignores the state argument, and so does cweb).
 * ctx->scheduler is this module's; a module may also run its own with
 * scheduler_init.
 */
typedef void (*work_t)(void *);
typedef enum { ASYNC, SYNC } worker_state_t;

struct work {
    work_t work;
    void *data;
    struct work *next;
};

struct scheduler {
    struct work *head;
    struct work *tail;
    size_t size;
    size_t capacity;            /* 0: unbounded (ctx->scheduler: 1024) */
    pthread_mutex_t mutex;
    pthread_cond_t work_available;
#ifndef __cplusplus
    atomic_int running;
    atomic_int accepting;
    atomic_int draining;
#else
    int running, accepting, draining;
#endif
    pthread_t thread;
};

int scheduler_init(struct scheduler *scheduler, size_t capacity);
void scheduler_shutdown(struct scheduler *scheduler);
/* 0, or -1 when the queue is full or the scheduler stopped accepting. */
int scheduler_add(struct scheduler *scheduler, work_t work, void *data, worker_state_t state);
/* Stops accepting; what is queued still runs, drain or not (as there). */
void scheduler_request_stop(struct scheduler *scheduler, int drain);
int scheduler_pending_count(struct scheduler *scheduler);
void scheduler_cancel(struct scheduler *scheduler)
    CWEB_UNAVAILABLE("scheduler_cancel: it kills the scheduler thread with pthread_cancel, which can leave the worker's locks held; use scheduler_request_stop(s, 0) and scheduler_shutdown");

/* The module's own SQLite database (docs/SDK-services.md): c-web-modules'
 * struct sqldb, members and signatures as its include/db.h. */
struct sqldb {
    sqlite3 *db;
    int (*exec)(struct sqldb *, const char *, int (*)(void *, int, char **, char **), void *);
    int (*prepare)(struct sqldb *, const char *, int, sqlite3_stmt **, const char **);
    int (*step)(sqlite3_stmt *);
    int (*finalize)(sqlite3_stmt *);
    int (*bind_text)(sqlite3_stmt *, int, const char *, int, void (*)(void *));
    int (*bind_int)(sqlite3_stmt *, int, int);
    const char *(*column_text)(sqlite3_stmt *, int);
    int (*column_int)(sqlite3_stmt *, int);
    int (*column_count)(sqlite3_stmt *);
    int (*reset)(sqlite3_stmt *);
    int (*changes)(struct sqldb *);
    int (*last_insert_rowid)(struct sqldb *);
    void (*free)(void *);
};
/* Opens filename (relative names: inside the module's own directory). */
int sqldb_init(struct sqldb *db, const char *filename);
void sqldb_shutdown(struct sqldb *db);

/* Signed tokens with the server's key pair, as c-web-modules' include/crypto.h.
 * The private key never enters the worker: signing happens in the runtime. */
typedef enum crypto_status {
    CRYPTO_FAILURE,
    CRYPTO_LOADED
} crypto_status_t;

struct crypto;

struct crypto_ops {
    /* Writes the base64 signature of token; returns its length, or -1. */
    int (*sign_token)(struct crypto *crypto, const char *token, char *signed_token, unsigned int signed_token_len);
    /* 0 when signed_token is a signature of token's first token_len bytes, else -1. */
    int (*verify_token)(struct crypto *crypto, const char *signed_token, const char *token, size_t token_len);
};

struct crypto {
    SSL_CTX *ctx;               /* holds the certificate only, never the key */
    const char *certificate;    /* informational: not readable from a worker */
    const char *private_key;    /* always "": the key stays in the runtime */
    crypto_status_t status;
    struct crypto_ops ops;
};

int crypto_init(struct crypto *crypto, const char *certificate, const char *private_key);
void crypto_shutdown(struct crypto *crypto);

struct symbols {
    void *user_data;
    void *(*resolv)(void *user_data, const char *module, const char *symbol)
        CWEB_DIFFERS("each module runs in its own process: ctx->symbols->resolv cannot reach another module's symbols and always returns NULL");
};

struct job_system;

typedef int (*jobs_create_fn_t)(void *user_data, const char *job_name, const char *payload_json,
                                cweb_uuid_t *job_uuid_out);

typedef struct cweb_context {
    struct container *cache;
    struct scheduler *scheduler;
    struct sqldb *database;
    struct crypto *crypto;
    struct symbols *symbols;
    struct job_system *jobs;
} cweb_context_t;

/* Cross-module cache: bytes in, bytes out, shared by every module of a server.
 * Each call is a round trip to the runtime, bounded by one second. */
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
    /* c-web-modules' router compiles path into these; cweb matches routes
     * in the server and leaves them zero. */
    regex_t regex;
    int regex_compiled;
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

/* Optional documentation for /docs (a cweb addition: a module without it
 * builds and behaves exactly the same, and c-web-modules modules need no
 * change). Define a table named cweb_docs, ended by an all-zero entry:
 *
 *   const cweb_doc_t cweb_docs[] = {
 *       { .method = "GET", .path = "/items/([0-9]+)", .summary = "One item",
 *         .example = "/items/42",
 *         .params = { { "id", "path", "the item's number", 1 },
 *                     { "fields", "query", "comma-separated fields", 0 } } },
 *       { .method = "JOB", .path = "sum", .summary = "Adds 1..n", .example = "{\"n\": 100}" },
 *       { .method = "WS", .path = "/chat", .summary = "A chat room", .example = "hello" },
 *       CWEB_DOCS_END
 *   };
 *
 * method and path name a route exactly as declared in config ("WS" and a
 * socket path, or "JOB" and a job name). example is a path the route
 * matches (for a regex route; checked against it), a job's payload (JSON)
 * or a socket message. "path" parameters name, in order, the parts of a
 * regex route's path that vary (capture groups and other non-literal runs).
 * The server reads at most CWEB_DOCS_MAX entries and clips long texts. */
#define CWEB_DOC_PARAMS 8
#define CWEB_DOCS_MAX 256
typedef struct cweb_doc_param {
    const char *name;
    const char *in;            /* "path", "query" or "header" */
    const char *description;
    int required;              /* path parameters always are */
} cweb_doc_param_t;

typedef struct cweb_doc {
    const char *method;        /* "GET", ..., "WS" or "JOB" */
    const char *path;          /* route or socket path as in config, or job name */
    const char *summary;       /* one line */
    const char *description;   /* Markdown */
    const char *example;
    cweb_doc_param_t params[CWEB_DOC_PARAMS];
} cweb_doc_t;

#define CWEB_DOCS_END { 0 }
extern const cweb_doc_t cweb_docs[];

/* Start a job, durably, as POST /jobs would: job_name resolves in this
 * module first, then to the single active module that defines it;
 * payload_json is a JSON object (NULL: {}). Returns 0 and fills
 * job_uuid_out (may be NULL), or -1: unknown or ambiguous name, bad payload,
 * no answer within 10 s, or called from onload (the channel to the server
 * opens only after onload returns). Blocks the calling thread meanwhile. */
int jobs_create(const char *job_name, const char *payload_json, cweb_uuid_t *job_uuid_out);
void jobs_bind(jobs_create_fn_t fn, void *user_data)
    CWEB_UNAVAILABLE("jobs_bind: the server binds jobs_create to its job system; a module only calls jobs_create");

#ifdef __cplusplus
}
#endif

#endif /* CWEB_H */
