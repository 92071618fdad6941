/*
 * cweb_services.c - the context services a module reaches through
 * struct cweb_context: the cross-module cache, the shared module database,
 * crypto and symbols (the container: cweb_map.c; deferred work:
 * cweb_scheduler.c).
 * Linked into every artifact together with cweb_glue.c.
 *
 * Every module runs in its own worker process, so a service that is shared
 * between modules lives in the data dir, not in memory:
 *
 *   <data_dir>/cache.shm        the cross-module cache, mapped by every
 *                               worker (MAP_SHARED), guarded by a robust
 *                               process-shared mutex in the file itself
 *   <data_dir>/modules.db       the SQLite database shared by modules (WAL)
 *   <data_dir>/server.key.bin   32 random bytes: the HMAC key of crypto
 *
 * docs/SDK-services.md is the user-facing description of all of this.
 */
#define _GNU_SOURCE
#include "cweb.h"
#include "cweb_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

static char g_data_dir[4096];

static void svc_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void svc_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cweb: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int data_path(char *out, size_t cap, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", g_data_dir[0] ? g_data_dir : ".", name);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* ================================================================== */
/* cross-module cache: one shared-memory file per server run           */
/*
 * Layout of cache.shm (all offsets from the start of the mapping):
 *
 *   [cache_hdr][buckets: u32 x nbuckets][pad to 4 KiB][arena ...]
 *
 * The arena is a buddy allocator over 64-byte units. A block of order k is
 * 64 << k bytes; the largest ("top") blocks tile the arena. An entry is one
 * block: a cache_blk header, the key (no NUL), then the value. Blocks are
 * named by unit index + 1 (0 is "none"), which fits 256 GiB in a u32.
 * Entries hang on a hash chain (buckets) and on one global LRU list; free
 * blocks hang on a free list per order. One robust, process-shared mutex in
 * the header guards everything; a holder that dies mid-update leaves the
 * mutex EOWNERDEAD and the next locker empties the cache (it is only a
 * cache) and marks the mutex consistent.
 *
 * The api recreates the file at every server start (api/cache_admin.py), so
 * the cache survives hot swaps but not restarts. If no file exists the first
 * worker creates one of CACHE_DEFAULT_BYTES. The first process to map a file
 * whose magic is zero lays it out, under flock() so a racing opener waits.
 */

#define CACHE_FILE "cache.shm"
#define CACHE_MAGIC 0x3163616368657763ULL /* "cwehcac1" */
#define CACHE_VERSION 1u
#define CACHE_DEFAULT_BYTES (64ull << 20)
#define CACHE_MIN_BYTES (256ull << 10)
#define CACHE_UNIT_SHIFT 6u               /* 64-byte blocks at least */
#define CACHE_MAX_ORDERS 32
#define CACHE_MAX_TOP (16ull << 20)       /* largest block: bounds one value */
#define CACHE_BYTES_PER_BUCKET 512u
#define CACHE_KEY_MAX 250u
#define NIL 0u

struct cache_hdr {
    _Atomic uint64_t magic;     /* CACHE_MAGIC once laid out */
    uint32_t version;
    uint32_t top_order;
    uint64_t file_size;
    uint64_t buckets_off;
    uint64_t arena_off;
    uint64_t arena_units;
    uint32_t nbuckets;          /* power of two */
    uint32_t lru_head, lru_tail; /* most / least recently used */
    uint32_t free_head[CACHE_MAX_ORDERS];
    uint64_t entries, used_bytes;
    uint64_t hits, misses, sets, evictions, expirations, resets;
    pthread_mutex_t lock;
};

struct cache_blk {
    uint8_t order;
    uint8_t used;
    uint16_t keylen;
    uint32_t vallen;
    uint32_t prev, next;        /* LRU links when used, free-list links when free */
    uint32_t chain;             /* next entry in the same bucket */
    uint32_t pad_;
    uint64_t hash;
    int64_t expires_ms;         /* CLOCK_REALTIME; 0 = never */
};

static struct {
    struct cache_hdr *h;
    size_t size;
    uint32_t *buckets;
    char *arena;
} C;

static inline struct cache_blk *blk(uint32_t ref)
{
    return (struct cache_blk *)(C.arena + ((size_t)(ref - 1) << CACHE_UNIT_SHIFT));
}

static inline size_t blk_bytes(unsigned order)
{
    return (size_t)1 << (order + CACHE_UNIT_SHIFT);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* ---- free lists and buddies ---- */

static void free_push(uint32_t ref, unsigned order)
{
    struct cache_hdr *h = C.h;
    struct cache_blk *b = blk(ref);
    b->order = (uint8_t)order;
    b->used = 0;
    b->prev = NIL;
    b->next = h->free_head[order];
    if (b->next)
        blk(b->next)->prev = ref;
    h->free_head[order] = ref;
}

static void free_unlink(uint32_t ref)
{
    struct cache_blk *b = blk(ref);
    if (b->prev)
        blk(b->prev)->next = b->next;
    else
        C.h->free_head[b->order] = b->next;
    if (b->next)
        blk(b->next)->prev = b->prev;
}

static uint32_t buddy_alloc(unsigned order)
{
    struct cache_hdr *h = C.h;
    unsigned j = order;
    while (j <= h->top_order && !h->free_head[j])
        j++;
    if (j > h->top_order)
        return NIL;
    uint32_t ref = h->free_head[j];
    free_unlink(ref);
    while (j > order) {
        j--;
        free_push(ref + (1u << j), j);
    }
    struct cache_blk *b = blk(ref);
    b->order = (uint8_t)order;
    b->used = 1;
    return ref;
}

static void buddy_free(uint32_t ref)
{
    struct cache_hdr *h = C.h;
    unsigned order = blk(ref)->order;
    uint32_t unit = ref - 1;
    while (order < h->top_order) {
        uint32_t bunit = unit ^ (1u << order);
        struct cache_blk *bb = blk(bunit + 1);
        if (bb->used || bb->order != order)
            break;
        free_unlink(bunit + 1);
        if (bunit < unit)
            unit = bunit;
        order++;
    }
    free_push(unit + 1, order);
}

/* ---- LRU and hash chains ---- */

static void lru_unlink(uint32_t ref)
{
    struct cache_blk *b = blk(ref);
    if (b->prev)
        blk(b->prev)->next = b->next;
    else
        C.h->lru_head = b->next;
    if (b->next)
        blk(b->next)->prev = b->prev;
    else
        C.h->lru_tail = b->prev;
}

static void lru_push_head(uint32_t ref)
{
    struct cache_hdr *h = C.h;
    struct cache_blk *b = blk(ref);
    b->prev = NIL;
    b->next = h->lru_head;
    if (b->next)
        blk(b->next)->prev = ref;
    h->lru_head = ref;
    if (!h->lru_tail)
        h->lru_tail = ref;
}

/* Finds key; *link_out points at the reference that names the entry. */
static uint32_t chain_find(const char *key, size_t klen, uint64_t hash, uint32_t **link_out)
{
    uint32_t *link = &C.buckets[hash & (C.h->nbuckets - 1)];
    while (*link) {
        struct cache_blk *b = blk(*link);
        if (b->hash == hash && b->keylen == klen && memcmp(b + 1, key, klen) == 0) {
            if (link_out)
                *link_out = link;
            return *link;
        }
        link = &b->chain;
    }
    return NIL;
}

static void entry_remove(uint32_t ref, uint32_t *link)
{
    struct cache_blk *b = blk(ref);
    if (!link) {
        link = &C.buckets[b->hash & (C.h->nbuckets - 1)];
        while (*link != ref)
            link = &blk(*link)->chain;
    }
    *link = b->chain;
    lru_unlink(ref);
    C.h->entries--;
    C.h->used_bytes -= blk_bytes(b->order);
    buddy_free(ref);
}

/* Empties the table and rebuilds the free lists; the header's geometry stays. */
static void cache_clear_locked(void)
{
    struct cache_hdr *h = C.h;
    memset(C.buckets, 0, (size_t)h->nbuckets * sizeof(uint32_t));
    memset(h->free_head, 0, sizeof(h->free_head));
    h->lru_head = h->lru_tail = NIL;
    h->entries = h->used_bytes = 0;
    uint64_t top_units = 1ull << h->top_order;
    for (uint64_t u = h->arena_units; u >= top_units; u -= top_units)
        free_push((uint32_t)(u - top_units + 1), h->top_order);
}

static int cache_lock(void)
{
    int rc = pthread_mutex_lock(&C.h->lock);
    if (rc == EOWNERDEAD) {
        /* A process died holding the lock, perhaps mid-update: start empty. */
        cache_clear_locked();
        C.h->resets++;
        pthread_mutex_consistent(&C.h->lock);
        svc_log("cache: a worker died while holding the cache lock; the cache was emptied");
        return 0;
    }
    return rc == 0 ? 0 : -1;
}

static void cache_unlock(void)
{
    pthread_mutex_unlock(&C.h->lock);
}

/* Lays out a fresh (all-zero) file of size bytes. */
static int cache_format(struct cache_hdr *h, size_t size)
{
    size_t hdr_bytes = (sizeof(*h) + 63) & ~(size_t)63;
    uint32_t nb = 256;
    while ((uint64_t)nb * 2 * CACHE_BYTES_PER_BUCKET <= size && nb < (1u << 30))
        nb *= 2;
    size_t arena_off = (hdr_bytes + (size_t)nb * sizeof(uint32_t) + 4095) & ~(size_t)4095;
    if (arena_off >= size)
        return -1;
    size_t arena_bytes = size - arena_off;
    unsigned top = 0;
    while (top + 1 < CACHE_MAX_ORDERS && blk_bytes(top + 1) <= arena_bytes / 16 && blk_bytes(top + 1) <= CACHE_MAX_TOP)
        top++;
    uint64_t top_units = 1ull << top;
    uint64_t units = ((arena_bytes >> CACHE_UNIT_SHIFT) / top_units) * top_units;
    if (units == 0 || units >= UINT32_MAX)
        return -1;

    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&h->lock, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0)
        return -1;
    h->version = CACHE_VERSION;
    h->file_size = size;
    h->nbuckets = nb;
    h->buckets_off = hdr_bytes;
    h->arena_off = arena_off;
    h->arena_units = units;
    h->top_order = top;
    C.h = h;
    C.buckets = (uint32_t *)((char *)h + hdr_bytes);
    C.arena = (char *)h + arena_off;
    cache_clear_locked();
    atomic_store_explicit(&h->magic, CACHE_MAGIC, memory_order_release);
    return 0;
}

static void cache_attach(void)
{
    char path[4200];
    if (data_path(path, sizeof(path), CACHE_FILE) != 0)
        return;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        svc_log("cache: cannot open %s: %s", path, strerror(errno));
        return;
    }
    void *map = MAP_FAILED;
    struct stat st;
    flock(fd, LOCK_EX);
    if (fstat(fd, &st) != 0)
        goto out;
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        size = CACHE_DEFAULT_BYTES;
        if (ftruncate(fd, (off_t)size) != 0) {
            svc_log("cache: cannot size %s: %s", path, strerror(errno));
            goto out;
        }
    }
    if (size < CACHE_MIN_BYTES) {
        svc_log("cache: %s is smaller than %llu bytes; the cache is off", path, (unsigned long long)CACHE_MIN_BYTES);
        goto out;
    }
    map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        svc_log("cache: cannot map %s: %s", path, strerror(errno));
        goto out;
    }
    struct cache_hdr *h = map;
    uint64_t magic = atomic_load_explicit(&h->magic, memory_order_acquire);
    if (magic == 0) {
        if (cache_format(h, size) != 0) {
            svc_log("cache: cannot lay out %s", path);
            goto unmap;
        }
    } else if (magic != CACHE_MAGIC || h->version != CACHE_VERSION || h->file_size != size) {
        /* Another SDK version laid this file out and may be using it now. */
        svc_log("cache: %s has another layout (an older or newer SDK); the cache is off until the server restarts", path);
        goto unmap;
    }
    C.h = h;
    C.size = size;
    C.buckets = (uint32_t *)((char *)h + h->buckets_off);
    C.arena = (char *)h + h->arena_off;
    goto out;
unmap:
    munmap(map, size);
    C.h = NULL;
out:
    flock(fd, LOCK_UN);
    close(fd);
}

int cweb_cache_set(struct cweb_context *ctx, const char *key, const void *data, size_t len, int ttl_seconds)
{
    (void)ctx;
    size_t klen = key ? strlen(key) : 0;
    if (!key || klen == 0 || klen > CACHE_KEY_MAX || (!data && len) || ttl_seconds < 0) {
        errno = EINVAL;
        return -1;
    }
    if (!C.h) {
        errno = ENOSYS;
        return -1;
    }
    size_t need = sizeof(struct cache_blk) + klen + len;
    unsigned order = 0;
    while (blk_bytes(order) < need && order < C.h->top_order + 1u)
        order++;
    if (blk_bytes(order) < need || order > C.h->top_order) {
        errno = E2BIG;
        return -1;
    }
    uint64_t hash = fnv1a(key, klen);
    int64_t expires = ttl_seconds > 0 ? now_ms() + (int64_t)ttl_seconds * 1000 : 0;
    if (cache_lock() != 0) {
        errno = EIO;
        return -1;
    }
    uint32_t *link;
    uint32_t old = chain_find(key, klen, hash, &link);
    if (old)
        entry_remove(old, link);
    uint32_t ref;
    while ((ref = buddy_alloc(order)) == NIL) {
        if (!C.h->lru_tail)
            break;
        entry_remove(C.h->lru_tail, NULL);
        C.h->evictions++;
    }
    if (ref == NIL) {
        cache_unlock();
        errno = ENOMEM;
        return -1;
    }
    struct cache_blk *b = blk(ref);
    b->keylen = (uint16_t)klen;
    b->vallen = (uint32_t)len;
    b->hash = hash;
    b->expires_ms = expires;
    memcpy(b + 1, key, klen);
    if (len)
        memcpy((char *)(b + 1) + klen, data, len);
    uint32_t *bucket = &C.buckets[hash & (C.h->nbuckets - 1)];
    b->chain = *bucket;
    *bucket = ref;
    lru_push_head(ref);
    C.h->entries++;
    C.h->used_bytes += blk_bytes(order);
    C.h->sets++;
    cache_unlock();
    return 0;
}

/* Looks key up under the lock: 0 with the lock held (*ref is 0 when the key
 * is absent), or -1 without it (no cache, a bad key, a failed lock). */
static int cache_find(const char *key, size_t *klen, uint32_t *ref, uint32_t **link)
{
    *klen = key ? strlen(key) : 0;
    if (!C.h || *klen == 0 || *klen > CACHE_KEY_MAX)
        return -1;
    uint64_t hash = fnv1a(key, *klen);
    if (cache_lock() != 0)
        return -1;
    *ref = chain_find(key, *klen, hash, link);
    return 0;
}

ssize_t cweb_cache_get(struct cweb_context *ctx, const char *key, void *buf, size_t cap)
{
    (void)ctx;
    size_t klen;
    uint32_t ref, *link;
    if (cache_find(key, &klen, &ref, &link) != 0)
        return -1;
    if (!ref) {
        C.h->misses++;
        cache_unlock();
        return -1;
    }
    struct cache_blk *b = blk(ref);
    if (b->expires_ms && b->expires_ms <= now_ms()) {
        entry_remove(ref, link);
        C.h->expirations++;
        C.h->misses++;
        cache_unlock();
        return -1;
    }
    if (C.h->lru_head != ref) {
        lru_unlink(ref);
        lru_push_head(ref);
    }
    size_t len = b->vallen;
    if (buf && cap)
        memcpy(buf, (char *)(b + 1) + klen, len < cap ? len : cap);
    C.h->hits++;
    cache_unlock();
    return (ssize_t)len;
}

int cweb_cache_del(struct cweb_context *ctx, const char *key)
{
    (void)ctx;
    size_t klen;
    uint32_t ref, *link;
    if (cache_find(key, &klen, &ref, &link) != 0)
        return -1;
    int expired = ref && blk(ref)->expires_ms && blk(ref)->expires_ms <= now_ms();
    if (ref)
        entry_remove(ref, link);
    cache_unlock();
    return ref && !expired ? 0 : -1;
}

/* ================================================================== */
/* clocks                                                             */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ================================================================== */
/* shared module database: <data_dir>/modules.db                      */

#define DB_FILE "modules.db"
#define DB_BUSY_TIMEOUT_MS 5000

static sqlite3 *g_db;

static int db_exec(const char *sql, int (*cb)(void *, int, char **, char **), void *arg)
{
    if (!g_db)
        return SQLITE_CANTOPEN;
    char *err = NULL;
    int rc = sqlite3_exec(g_db, sql, cb, arg, &err);
    if (rc != SQLITE_OK && rc != SQLITE_ABORT)
        svc_log("database: %s", err ? err : sqlite3_errstr(rc));
    sqlite3_free(err);
    return rc;
}

static int db_prepare(sqlite3 *db, const char *sql, int n, sqlite3_stmt **stmt, const char **tail)
{
    if (!db) {
        if (stmt)
            *stmt = NULL;
        return SQLITE_MISUSE;
    }
    return sqlite3_prepare_v2(db, sql, n, stmt, tail);
}

static const char *db_column_text(sqlite3_stmt *stmt, int i)
{
    return (const char *)sqlite3_column_text(stmt, i);
}

static int db_changes(sqlite3 *db)
{
    return db ? sqlite3_changes(db) : 0;
}

static int db_last_insert_rowid(sqlite3 *db)
{
    return db ? (int)sqlite3_last_insert_rowid(db) : 0;
}

static struct sqldb g_sqldb = {
    .db = NULL,
    .exec = db_exec,
    .prepare = db_prepare,
    .step = sqlite3_step,
    .finalize = sqlite3_finalize,
    .bind_text = sqlite3_bind_text,
    .bind_int = sqlite3_bind_int,
    .column_text = db_column_text,
    .column_int = sqlite3_column_int,
    .column_count = sqlite3_column_count,
    .reset = sqlite3_reset,
    .changes = db_changes,
    .last_insert_rowid = db_last_insert_rowid,
    .free = sqlite3_free,
};

/* Busy handler: SQLite's default one sleeps in steps of up to 100 ms, which
 * leaves the database idle when several workers take turns writing. This one
 * retries after 50 us, backing off to 1 ms, for DB_BUSY_TIMEOUT_MS in all. */
static __thread uint64_t t_busy_since;

static int db_busy(void *arg, int count)
{
    (void)arg;
    uint64_t now = mono_ns();
    if (count == 0)
        t_busy_since = now;
    if (now - t_busy_since >= (uint64_t)DB_BUSY_TIMEOUT_MS * 1000000ull)
        return 0;
    usleep(count < 20 ? 50 : count < 200 ? 200 : 1000);
    return 1;
}

static void db_open(void)
{
    char path[4200];
    if (data_path(path, sizeof(path), DB_FILE) != 0)
        return;
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        svc_log("database: cannot open %s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return;
    }
    /* The busy handler first, so that switching to WAL waits its turn too. */
    sqlite3_busy_handler(db, db_busy, NULL);
    char *err = NULL;
    if (sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL, NULL, &err) != SQLITE_OK)
        svc_log("database: %s", err ? err : "cannot enable WAL");
    sqlite3_free(err);
    g_db = db;
    g_sqldb.db = db;
}

/* ================================================================== */
/* crypto: HMAC-SHA256 signed tokens with the server key              */
/*
 * signed form: "<token>.<base64url(HMAC-SHA256(key, token)), no padding>"
 */

#define KEY_FILE "server.key.bin"
#define KEY_BYTES 32
#define MAC_B64_LEN 43          /* 32 bytes in unpadded base64url */

static unsigned char g_key[KEY_BYTES];
static int g_key_ready;

static void b64url(const unsigned char *in, size_t n, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = tbl[v >> 6 & 63];
        out[o++] = tbl[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = tbl[v >> 6 & 63];
    }
    out[o] = '\0';
}

static int token_mac(const char *token, size_t len, char out[MAC_B64_LEN + 1])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha256(), g_key, KEY_BYTES, (const unsigned char *)token, len, mac, &maclen) || maclen != 32)
        return -1;
    b64url(mac, maclen, out);
    OPENSSL_cleanse(mac, sizeof(mac));
    return 0;
}

/* Writes "<token>.<mac>" into signed_token; 0 on success, -1 when the buffer
 * is too small or crypto is unavailable. */
static int sign_token(const char *token, char *signed_token, unsigned int signed_token_len)
{
    if (!token || !signed_token || !g_key_ready)
        return -1;
    size_t n = strlen(token);
    if ((size_t)signed_token_len < n + 1 + MAC_B64_LEN + 1)
        return -1;
    char mac[MAC_B64_LEN + 1];
    if (token_mac(token, n, mac) != 0)
        return -1;
    memmove(signed_token, token, n);
    signed_token[n] = '.';
    memcpy(signed_token + n + 1, mac, MAC_B64_LEN + 1);
    return 0;
}

/* Checks the MAC of "<token>.<mac>"; on success copies the token part into
 * token (NUL-terminated) and returns 0. -1 when tampered, malformed, or the
 * token does not fit in token_len bytes. */
static int verify_token(const char *signed_token, char *token, size_t token_len)
{
    if (!signed_token || !g_key_ready)
        return -1;
    const char *dot = strrchr(signed_token, '.');
    if (!dot || strlen(dot + 1) != MAC_B64_LEN)
        return -1;
    size_t n = (size_t)(dot - signed_token);
    char mac[MAC_B64_LEN + 1];
    if (token_mac(signed_token, n, mac) != 0)
        return -1;
    if (CRYPTO_memcmp(mac, dot + 1, MAC_B64_LEN) != 0)
        return -1;
    if (token) {
        if (token_len < n + 1)
            return -1;
        memmove(token, signed_token, n);
        token[n] = '\0';
    }
    return 0;
}

static struct crypto_ops g_crypto_ops = {.sign_token = sign_token, .verify_token = verify_token};
static struct crypto g_crypto = {.ctx = NULL, .status = -1, .ops = &g_crypto_ops};

static int read_key(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    unsigned char extra;
    ssize_t n = read(fd, g_key, KEY_BYTES);
    ssize_t m = read(fd, &extra, 1);
    close(fd);
    if (n != KEY_BYTES || m != 0) {
        svc_log("crypto: %s must hold exactly %d bytes; signing is off", path, KEY_BYTES);
        errno = EINVAL;
        return -2;
    }
    return 0;
}

/* The api writes the key at startup; if it did not, the first worker does,
 * through a temporary file and link() so that a racing worker reads either
 * nothing or the whole key. */
static void crypto_init(void)
{
    char path[4200], tmp[4300];
    if (data_path(path, sizeof(path), KEY_FILE) != 0)
        return;
    int rc = read_key(path);
    if (rc == -1 && errno == ENOENT) {
        unsigned char key[KEY_BYTES];
        snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0 && RAND_bytes(key, KEY_BYTES) == 1 && write(fd, key, KEY_BYTES) == KEY_BYTES && fsync(fd) == 0) {
            close(fd);
            fd = -1;
            if (link(tmp, path) != 0 && errno != EEXIST)
                svc_log("crypto: cannot create %s: %s", path, strerror(errno));
        }
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        OPENSSL_cleanse(key, sizeof(key));
        rc = read_key(path);
    }
    if (rc == -1)
        svc_log("crypto: cannot read %s: %s; signing is off", path, strerror(errno));
    g_key_ready = rc == 0;
    g_crypto.status = rc == 0 ? 0 : -1;
}

/* ================================================================== */
/* symbols: one module per worker, so there is never another module's */
/* symbol to resolve in this process                                   */

static void *no_symbol(void *user_data, const char *module, const char *symbol)
{
    (void)user_data; (void)module; (void)symbol;
    return NULL;
}
/* The field is marked for modules' builds, not for this initialiser. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static struct symbols g_symbols = {.user_data = NULL, .resolv = no_symbol};
#pragma GCC diagnostic pop

/* ================================================================== */

/* ctx->jobs: the original's job system lives in the server; modules only
 * test it for NULL before calling jobs_create, so it is a token here. */
struct job_system {
    int unused;
};
static struct job_system g_jobs;

cweb_context_t cweb_g_ctx = {
    .cache = &cweb_g_container,
    .scheduler = &cweb_g_scheduler,
    .database = &g_sqldb,
    .crypto = &g_crypto,
    .symbols = &g_symbols,
    .jobs = &g_jobs,
};

void cweb_services_init(const char *data_dir)
{
    snprintf(g_data_dir, sizeof(g_data_dir), "%s", data_dir && data_dir[0] ? data_dir : ".");
    cweb_scheduler_setup();
    cache_attach();
    db_open();
    crypto_init();
}
