/*
 * json.c - a shared list kept as a Jansson array in module state.
 *
 *   GET  /list       the items as a JSON array
 *   POST /json/add   form field "item" (urlencoded or multipart) is appended;
 *                    answers the updated list, or 400 when "item" is missing
 *
 * Handlers run on several threads, and Jansson values are not thread-safe,
 * so every access to the array holds the mutex, including serialisation.
 */
#include <cweb.h>

static json_t *items;
static pthread_mutex_t items_lock = PTHREAD_MUTEX_INITIALIZER;

static void reply_json(http_response_t *res, http_error_t status, const char *text)
{
    size_t len = strlen(text);
    /* A long list may outgrow the preallocated body buffer. */
    if (len >= HTTP_RESPONSE_SIZE) {
        char *big = http_response_alloc(res, len);
        if (!big) {
            snprintf(res->body, HTTP_RESPONSE_SIZE, "{\"error\":\"list too large\"}");
            status = HTTP_500_INTERNAL_SERVER_ERROR;
        } else {
            memcpy(big, text, len);
        }
    } else {
        memcpy(res->body, text, len + 1);
    }
    http_kv_insert(res->headers, "Content-Type", strdup("application/json"));
    res->status = status;
}

/* Serialises the list; the caller holds items_lock and frees the result. */
static char *dump_items_locked(void)
{
    return json_dumps(items, JSON_COMPACT);
}

static int list_items(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    (void)req;
    pthread_mutex_lock(&items_lock);
    char *text = dump_items_locked();
    pthread_mutex_unlock(&items_lock);

    reply_json(res, HTTP_200_OK, text ? text : "[]");
    free(text);
    return 0;
}

static int add_item(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    const char *item = http_kv_get(req->data, "item");
    if (!item || !*item) {
        reply_json(res, HTTP_400_BAD_REQUEST, "{\"error\":\"missing form field 'item'\"}");
        return 0;
    }

    pthread_mutex_lock(&items_lock);
    /* json_string() copies, and rejects bytes that are not valid UTF-8. */
    json_t *value = json_string(item);
    int ok = value && json_array_append_new(items, value) == 0;
    char *text = ok ? dump_items_locked() : NULL;
    pthread_mutex_unlock(&items_lock);

    if (!ok) {
        reply_json(res, HTTP_400_BAD_REQUEST, "{\"error\":\"'item' must be UTF-8 text\"}");
        return 0;
    }
    reply_json(res, HTTP_200_OK, text ? text : "[]");
    free(text);
    return 0;
}

static void json_onload(struct cweb_context *ctx)
{
    (void)ctx;
    items = json_array();
}

static void json_unload(struct cweb_context *ctx)
{
    (void)ctx;
    pthread_mutex_lock(&items_lock);
    json_decref(items);
    items = NULL;
    pthread_mutex_unlock(&items_lock);
}

export module_t config = {
    .name = "json",
    .author = "cweb",
    .routes = {
        {"/list", "GET", list_items, NONE},
        {"/json/add", "POST", add_item, NONE},
    },
    .size = 2,
    .onload = json_onload,
    .unload = json_unload,
};
