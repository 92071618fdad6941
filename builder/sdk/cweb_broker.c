/*
 * cweb_broker.c - the worker's side of the services broker: the
 * cross-module cache (cweb_cache_*) and token signing (ctx->crypto).
 *
 * Both live in the runtime (runtime/services.py), not in any worker: a
 * module is native code, so a table it could map it could corrupt and a
 * lock it could take it could hold. This file only sends requests over the
 * channel the worker inherited (fd in CWEB_SERVICES_FD, a SOCK_SEQPACKET
 * socket) and reads the answers. The wire format is described at the top
 * of runtime/services.py.
 *
 * One call at a time per worker (g_lock), each bounded by CALL_TIMEOUT_MS:
 * a late answer carries an old sequence number and is skipped by the next
 * call. Only this worker's own threads can be held up by this lock.
 */
#define _GNU_SOURCE
#include "cweb.h"
#include "cweb_wire.h"
#include "cweb_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CALL_TIMEOUT_MS 1000
#define HELLO_MAX (64u << 10)

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_fd = -1;
static int g_hello;             /* the broker answered HELLO */
static uint32_t g_seq;
static size_t g_max_value;
static int g_crypto_ready;
static char *g_cert_pem;
static unsigned char g_rec[CWEB_BROKER_HEADER_BYTES + CWEB_BROKER_RECORD_PAYLOAD];

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Waits for events on g_fd until deadline; 0 when ready, -ETIMEDOUT. */
static int wait_fd(short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = g_fd, .events = events};
        int n = poll(&p, 1, (int)(deadline - now));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

/*
 * One request and its answer, with g_lock held. The request's payload is
 * key (klen bytes) then val (vlen bytes). On success returns the reply's
 * status (>= 0, or a negated errno from the broker) and copies up to cap
 * bytes of the reply's payload into out; *got is the payload's full length.
 * Returns a negated errno of its own when the channel fails or times out.
 */
static int call_locked(uint8_t op, const void *key, size_t klen, const void *val, size_t vlen, int32_t arg,
                       void *out, size_t cap, size_t *got)
{
    if (g_fd < 0)
        return -ENOSYS;
    uint64_t deadline = mono_ms() + CALL_TIMEOUT_MS;
    uint32_t seq = ++g_seq;
    size_t total = klen + vlen, off = 0;
    do {
        size_t n = total - off < CWEB_BROKER_RECORD_PAYLOAD ? total - off : CWEB_BROKER_RECORD_PAYLOAD;
        unsigned char h[CWEB_BROKER_HEADER_BYTES];
        put32(h, seq);
        h[4] = op;
        h[5] = (uint8_t)((off == 0 ? CWEB_BROKER_FIRST : 0) | (off + n >= total ? CWEB_BROKER_LAST : 0));
        h[6] = (unsigned char)klen;
        h[7] = (unsigned char)(klen >> 8);
        put32(h + 8, (uint32_t)arg);
        put32(h + 12, (uint32_t)total);
        struct iovec iov[3] = {{h, sizeof(h)}};
        int niov = 1;
        /* The record's slice of key||val, as at most two pieces. */
        if (off < klen) {
            size_t k = klen - off < n ? klen - off : n;
            iov[niov++] = (struct iovec){(char *)key + off, k};
            if (n > k)
                iov[niov++] = (struct iovec){(void *)val, n - k};
        } else if (n) {
            iov[niov++] = (struct iovec){(char *)val + (off - klen), n};
        }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
        for (;;) {
            ssize_t s = sendmsg(g_fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (s >= 0)
                break;
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return -EPIPE;
            int w = wait_fd(POLLOUT, deadline);
            if (w)
                return w;
        }
        off += n;
    } while (off < total);

    size_t have = 0;
    int status = 0, started = 0;
    for (;;) {
        ssize_t r = recv(g_fd, g_rec, sizeof(g_rec), MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN) {
            int w = wait_fd(POLLIN, deadline);
            if (w)
                return w;
            continue;
        }
        if (r <= 0)
            return -EPIPE;
        if ((size_t)r < CWEB_BROKER_HEADER_BYTES || get32(g_rec) != seq || g_rec[4] != (CWEB_BROKER_REPLY | op))
            continue;               /* the late answer of a call that gave up */
        uint8_t flags = g_rec[5];
        if (flags & CWEB_BROKER_FIRST) {
            started = 1;
            have = 0;
            status = (int32_t)get32(g_rec + 8);
            if (got)
                *got = get32(g_rec + 12);
        } else if (!started) {
            continue;
        }
        size_t n = (size_t)r - CWEB_BROKER_HEADER_BYTES;
        if (have < cap && out) {
            size_t c = cap - have < n ? cap - have : n;
            memcpy((char *)out + have, g_rec + CWEB_BROKER_HEADER_BYTES, c);
        }
        have += n;
        if (flags & CWEB_BROKER_LAST)
            return status;
    }
}

static int hello_locked(void);

/* A call with the lock, after the HELLO that tells the limits. */
static int call(uint8_t op, const void *key, size_t klen, const void *val, size_t vlen, int32_t arg,
                void *out, size_t cap, size_t *got)
{
    pthread_mutex_lock(&g_lock);
    int rc = g_hello ? 0 : hello_locked();
    if (rc == 0)
        rc = call_locked(op, key, klen, val, vlen, arg, out, cap, got);
    pthread_mutex_unlock(&g_lock);
    return rc;
}

static int hello_locked(void)
{
    char *buf = malloc(HELLO_MAX + 1);
    size_t got = 0;
    if (!buf)
        return -ENOMEM;
    int rc = call_locked(CWEB_BROKER_HELLO, NULL, 0, NULL, 0, 0, buf, HELLO_MAX, &got);
    if (rc < 0 || got > HELLO_MAX) {
        free(buf);
        return rc < 0 ? rc : -EPROTO;
    }
    buf[got] = '\0';
    json_t *o = json_loads(buf, 0, NULL);
    free(buf);
    if (!o)
        return -EPROTO;
    g_max_value = (size_t)json_integer_value(json_object_get(o, "max_value"));
    g_crypto_ready = json_is_true(json_object_get(o, "crypto"));
    const char *pem = json_string_value(json_object_get(o, "certificate"));
    free(g_cert_pem);
    g_cert_pem = strdup(pem ? pem : "");
    json_decref(o);
    g_hello = 1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* cross-module cache                                                  */

static int fail(int neg_errno)
{
    errno = -neg_errno;
    return -1;
}

static int key_ok(const char *key, size_t *klen)
{
    *klen = key ? strlen(key) : 0;
    return *klen > 0 && *klen <= CWEB_BROKER_KEY_MAX;
}

int cweb_cache_set(struct cweb_context *ctx, const char *key, const void *data, size_t len, int ttl_seconds)
{
    (void)ctx;
    size_t klen;
    if (!key_ok(key, &klen) || (!data && len) || ttl_seconds < 0)
        return fail(-EINVAL);
    if (g_hello && len > g_max_value)
        return fail(-E2BIG);
    int rc = call(CWEB_BROKER_SET, key, klen, data, len, ttl_seconds, NULL, 0, NULL);
    /* Refused for its size before this worker knew the limit. */
    if (rc == -EMSGSIZE)
        rc = -E2BIG;
    return rc < 0 ? fail(rc) : 0;
}

ssize_t cweb_cache_get(struct cweb_context *ctx, const char *key, void *buf, size_t cap)
{
    (void)ctx;
    size_t klen;
    if (!key_ok(key, &klen))
        return fail(-EINVAL);
    if (!buf)
        cap = 0;
    int rc = call(CWEB_BROKER_GET, key, klen, NULL, 0, cap > INT_MAX ? INT_MAX : (int32_t)cap, buf, cap, NULL);
    return rc < 0 ? fail(rc) : (ssize_t)rc;
}

int cweb_cache_del(struct cweb_context *ctx, const char *key)
{
    (void)ctx;
    size_t klen;
    if (!key_ok(key, &klen))
        return fail(-EINVAL);
    int rc = call(CWEB_BROKER_DEL, key, klen, NULL, 0, 0, NULL, 0, NULL);
    return rc < 0 ? fail(rc) : 0;
}

/* ------------------------------------------------------------------ */
/* signed tokens                                                       */

static int sign_token(struct crypto *crypto, const char *token, char *signed_token, unsigned int signed_token_len)
{
    if (!crypto || crypto->status != CRYPTO_LOADED || !token || !signed_token)
        return -1;
    size_t n = strlen(token);
    if (n > CWEB_BROKER_TOKEN_MAX)
        return -1;
    char sig[CWEB_BROKER_SIGNATURE_MAX];
    size_t got = 0;
    int rc = call(CWEB_BROKER_SIGN, NULL, 0, token, n, 0, sig, sizeof(sig), &got);
    if (rc < 0 || got >= sizeof(sig) || got >= signed_token_len)
        return -1;
    memcpy(signed_token, sig, got);
    signed_token[got] = '\0';
    return (int)got;
}

static int verify_token(struct crypto *crypto, const char *signed_token, const char *token, size_t token_len)
{
    if (!crypto || crypto->status != CRYPTO_LOADED || !signed_token || (!token && token_len))
        return -1;
    size_t slen = strlen(signed_token);
    if (slen > CWEB_BROKER_SIGNATURE_MAX || token_len > CWEB_BROKER_TOKEN_MAX)
        return -1;
    return call(CWEB_BROKER_VERIFY, signed_token, slen, token, token_len, 0, NULL, 0, NULL) == 0 ? 0 : -1;
}

struct crypto cweb_g_crypto = {
    .certificate = "",
    .private_key = "",
    .status = CRYPTO_FAILURE,
    .ops = {.sign_token = sign_token, .verify_token = verify_token},
};

/* An SSL_CTX with the server's certificate and no key, for modules that
 * look at crypto->ctx; the key itself never leaves the runtime. */
static SSL_CTX *cert_ctx(const char *pem)
{
    if (!pem || !pem[0])
        return NULL;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    SSL_CTX *ctx = cert ? SSL_CTX_new(TLS_server_method()) : NULL;
    if (ctx && SSL_CTX_use_certificate(ctx, cert) != 1) {
        SSL_CTX_free(ctx);
        ctx = NULL;
    }
    X509_free(cert);
    BIO_free(bio);
    return ctx;
}

int crypto_init(struct crypto *crypto, const char *certificate, const char *private_key)
{
    /* Signing always uses the server's key pair, held by the runtime:
     * a worker cannot read key files, so the paths are not used. */
    (void)certificate;
    (void)private_key;
    if (!crypto)
        return -1;
    pthread_mutex_lock(&g_lock);
    int ready = (g_hello || hello_locked() == 0) && g_crypto_ready;
    char *pem = g_cert_pem;
    pthread_mutex_unlock(&g_lock);
    crypto->ops.sign_token = sign_token;
    crypto->ops.verify_token = verify_token;
    crypto->certificate = pem ? pem : "";
    crypto->private_key = "";
    crypto->ctx = ready ? cert_ctx(pem) : NULL;
    crypto->status = ready ? CRYPTO_LOADED : CRYPTO_FAILURE;
    return ready ? 0 : -1;
}

void crypto_shutdown(struct crypto *crypto)
{
    if (!crypto)
        return;
    SSL_CTX_free(crypto->ctx);
    crypto->ctx = NULL;
    crypto->status = CRYPTO_FAILURE;
}

/* ------------------------------------------------------------------ */

void cweb_broker_init(void)
{
    const char *v = getenv("CWEB_SERVICES_FD");
    char *end = NULL;
    long fd = v ? strtol(v, &end, 10) : -1;
    struct stat st;
    if (fd >= 0 && end && *end == '\0' && fd <= INT_MAX && fstat((int)fd, &st) == 0 && S_ISSOCK(st.st_mode)) {
        g_fd = (int)fd;
        fcntl(g_fd, F_SETFD, FD_CLOEXEC);
    } else {
        fprintf(stderr, "cweb: no services channel (CWEB_SERVICES_FD); the cache and token signing are off\n");
    }
    if (crypto_init(&cweb_g_crypto, NULL, NULL) != 0 && g_fd >= 0)
        fprintf(stderr, "cweb: token signing is unavailable (see the server log)\n");
}
