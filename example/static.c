/*
 * static.c - serves files from a "static" directory.
 *
 * GET /static/<name> answers the file static/<name>, relative to the
 * module's working directory. That is the server's working directory (or
 * CWEB_WORKDIR when set), so start the server from example/ or set
 * CWEB_WORKDIR to the example/ directory to serve example/static/.
 *
 *   - a path containing ".." is refused with 403, so requests cannot climb
 *     out of static/;
 *   - anything that is not a regular file (missing, a directory) is 404;
 *   - Content-Type follows the extension;
 *   - files larger than the preallocated body go through
 *     http_response_alloc().
 */
#include <cweb.h>
#include <strings.h>
#include <sys/stat.h>

#define STATIC_PREFIX "/static/"
#define STATIC_DIR "static/"

static const struct {
    const char *ext;
    const char *type;
} content_types[] = {
    {".html", "text/html; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".txt", "text/plain; charset=utf-8"},
    {".json", "application/json"},
    {".png", "image/png"},
};

static const char *content_type_for(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (dot && !strchr(dot, '/')) {
        for (size_t i = 0; i < sizeof(content_types) / sizeof(content_types[0]); i++)
            if (strcasecmp(dot, content_types[i].ext) == 0)
                return content_types[i].type;
    }
    return "application/octet-stream";
}

static int reply_text(http_response_t *res, http_error_t status, const char *text)
{
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s\n", text);
    http_kv_insert(res->headers, "Content-Type", strdup("text/plain; charset=utf-8"));
    res->status = status;
    return 0;
}

static int serve_static(struct cweb_context *ctx, http_request_t *req, http_response_t *res)
{
    (void)ctx;
    /* The route regex guarantees the prefix; the host has already
     * percent-decoded the path, so "%2e%2e" arrives here as "..". */
    const char *name = req->path + strlen(STATIC_PREFIX);
    if (strstr(name, ".."))
        return reply_text(res, HTTP_403_FORBIDDEN, "forbidden");

    char file[4096];
    int n = snprintf(file, sizeof(file), "%s%s", STATIC_DIR, name);
    if (n < 0 || (size_t)n >= sizeof(file))
        return reply_text(res, HTTP_414_URI_TOO_LONG, "path too long");

    FILE *fp = fopen(file, "rb");
    if (!fp)
        return reply_text(res, HTTP_404_NOT_FOUND, "not found");

    /* fstat on the open file, not stat on the name, so the checks and the
     * read are about the same file. fopen() succeeds on directories. */
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return reply_text(res, HTTP_404_NOT_FOUND, "not found");
    }

    size_t size = (size_t)st.st_size;
    char *buf = res->body;
    if (size >= HTTP_RESPONSE_SIZE) {
        buf = http_response_alloc(res, size);
        if (!buf) {
            fclose(fp);
            return reply_text(res, HTTP_413_PAYLOAD_TOO_LARGE, "file too large");
        }
    }
    size_t got = fread(buf, 1, size, fp);
    fclose(fp);

    /* Set explicitly: binary files (png) contain NUL bytes, and 0 would
     * make the host fall back to strlen(). If the file shrank meanwhile,
     * send what was read. */
    buf[got] = '\0';
    res->content_length = (int)got;
    http_kv_insert(res->headers, "Content-Type", strdup(content_type_for(name)));
    res->status = HTTP_200_OK;
    return 0;
}

export module_t config = {
    .name = "static",
    .author = "cweb",
    .routes = {
        {"/static/.*", "GET", serve_static, NONE},
    },
    .size = 1,
};
