/*
 * kvstore.c - a small key/value store in the module's own database.
 *
 *   GET    /kv             every key with its value, as a JSON object
 *   GET    /kv/KEY         the value of KEY, or 404
 *   POST   /kv/KEY         the request body becomes the value of KEY
 *   DELETE /kv/KEY         removes KEY
 *
 * KEY is 1-64 letters, digits, '_', '-' or '.'. The table lives in this
 * module's database, a file of its own that no other module can open (and
 * that every later version of module "kvstore" finds again).
 * ctx->database->db is this worker's connection; all its threads share it,
 * and each statement below is one autocommit transaction.
 */
#include <cweb.h>

#define KEY_PATTERN "/kv/[A-Za-z0-9_.-]{1,64}"

static void reply(http_response_t *res, http_error_t status, const char *type, const char *text)
{
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", text);
    http_kv_insert(res->headers, "Content-Type", strdup(type));
    res->status = status;
}

static void db_failed(struct cweb_context *ctx, http_response_t *res)
{
    snprintf(res->body, HTTP_RESPONSE_SIZE, "{\"error\":\"database\",\"message\":\"%s\"}",
             ctx->database->db ? sqlite3_errmsg(ctx->database->db) : "no database");
    http_kv_insert(res->headers, "Content-Type", strdup("application/json"));
    res->status = HTTP_500_INTERNAL_SERVER_ERROR;
}

static const char *key_of(http_request_t *req)
{
    return req->path + strlen("/kv/");
}

static int get_value(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    struct sqldb *db = ctx->database;
    sqlite3_stmt *st = NULL;
    if (db->prepare(db, "SELECT v FROM kvstore WHERE k = ?", -1, &st, NULL) != SQLITE_OK) {
        db_failed(ctx, res);
        return 0;
    }
    db->bind_text(st, 1, key_of(req), -1, SQLITE_TRANSIENT);
    int rc = db->step(st);
    if (rc == SQLITE_ROW) {
        const char *v = db->column_text(st, 0);
        int len = sqlite3_column_bytes(st, 0);
        if (len < HTTP_RESPONSE_SIZE) {
            memcpy(res->body, v ? v : "", (size_t)len);
            res->content_length = len;
        } else {
            char *big = http_response_alloc(res, (size_t)len);
            if (big)
                memcpy(big, v, (size_t)len);
        }
        http_kv_insert(res->headers, "Content-Type", strdup("text/plain"));
        res->status = HTTP_200_OK;
    } else if (rc == SQLITE_DONE) {
        reply(res, HTTP_404_NOT_FOUND, "application/json", "{\"error\":\"not_found\",\"message\":\"no such key\"}");
    } else {
        db_failed(ctx, res);
    }
    db->finalize(st);
    return 0;
}

static int put_value(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    struct sqldb *db = ctx->database;
    sqlite3_stmt *st = NULL;
    if (db->prepare(db,
                    "INSERT INTO kvstore (k, v, updated_at) VALUES (?, ?, strftime('%s','now')) "
                    "ON CONFLICT(k) DO UPDATE SET v = excluded.v, updated_at = excluded.updated_at",
                    -1, &st, NULL) != SQLITE_OK) {
        db_failed(ctx, res);
        return 0;
    }
    db->bind_text(st, 1, key_of(req), -1, SQLITE_TRANSIENT);
    db->bind_text(st, 2, req->body, req->content_length, SQLITE_TRANSIENT);
    if (db->step(st) == SQLITE_DONE)
        reply(res, HTTP_201_CREATED, "application/json", "{\"stored\":true}");
    else
        db_failed(ctx, res);
    db->finalize(st);
    return 0;
}

static int delete_value(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    struct sqldb *db = ctx->database;
    sqlite3_stmt *st = NULL;
    if (db->prepare(db, "DELETE FROM kvstore WHERE k = ?", -1, &st, NULL) != SQLITE_OK) {
        db_failed(ctx, res);
        return 0;
    }
    db->bind_text(st, 1, key_of(req), -1, SQLITE_TRANSIENT);
    int rc = db->step(st);
    /* changes() counts what this connection's last statement did; other threads
     * share the connection, so read it right after the step. */
    int deleted = db->changes(db);
    db->finalize(st);
    if (rc != SQLITE_DONE)
        db_failed(ctx, res);
    else if (deleted)
        reply(res, HTTP_200_OK, "application/json", "{\"deleted\":true}");
    else
        reply(res, HTTP_404_NOT_FOUND, "application/json", "{\"error\":\"not_found\",\"message\":\"no such key\"}");
    return 0;
}

/* exec() callback: one row (k, v) into a JSON object. */
static int add_row(void *arg, int ncols, char **values, char **names)
{
    (void)names;
    if (ncols == 2 && values[0])
        json_object_set_new((json_t *)arg, values[0], json_string(values[1] ? values[1] : ""));
    return 0;
}

static int list_values(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)req;
    json_t *all = json_object();
    if (ctx->database->exec(ctx->database, "SELECT k, v FROM kvstore ORDER BY k", add_row, all) != SQLITE_OK) {
        json_decref(all);
        db_failed(ctx, res);
        return 0;
    }
    char *text = json_dumps(all, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(all);
    size_t len = text ? strlen(text) : 0;
    char *out = len < HTTP_RESPONSE_SIZE ? res->body : http_response_alloc(res, len);
    if (out && text) {
        memcpy(out, text, len);
        res->content_length = (int)len;
    }
    free(text);
    http_kv_insert(res->headers, "Content-Type", strdup("application/json"));
    res->status = out ? HTTP_200_OK : HTTP_500_INTERNAL_SERVER_ERROR;
    return 0;
}

static void create_table(struct cweb_context *ctx)
{
    ctx->database->exec(ctx->database, "CREATE TABLE IF NOT EXISTS kvstore ("
                        " k TEXT PRIMARY KEY, v TEXT NOT NULL, updated_at INTEGER NOT NULL)",
                        NULL, NULL);
}

/* What /docs shows for these routes (optional; see docs/SDK.md, cweb_docs). */
const cweb_doc_t cweb_docs[] = {
    { .method = "GET", .path = "/kv", .summary = "Every key with its value, as a JSON object" },
    { .method = "GET", .path = KEY_PATTERN, .summary = "The value of a key", .example = "/kv/colour",
      .params = { { "key", "path", "1-64 letters, digits, '_', '-' or '.'", 1 } } },
    { .method = "POST", .path = KEY_PATTERN, .summary = "Store the request body as the key's value",
      .example = "/kv/colour", .params = { { "key", "path", "1-64 letters, digits, '_', '-' or '.'", 1 } } },
    { .method = "DELETE", .path = KEY_PATTERN, .summary = "Forget a key", .example = "/kv/colour",
      .params = { { "key", "path", "1-64 letters, digits, '_', '-' or '.'", 1 } } },
    CWEB_DOCS_END
};

export module_t config = {
    .name = "kvstore",
    .author = "cweb",
    .routes = {
        {"/kv", "GET", list_values, NONE},
        {KEY_PATTERN, "GET", get_value, NONE},
        {KEY_PATTERN, "POST", put_value, NONE},
        {KEY_PATTERN, "DELETE", delete_value, NONE},
    },
    .size = 4,
    .onload = create_table,
};
