/*
 * cweb_services.c - the context services a module reaches through
 * struct cweb_context: the in-process container, deferred work, the
 * cross-module cache, the shared module database, crypto and symbols.
 * Linked into every artifact together with cweb_glue.c.
 */
#define _GNU_SOURCE
#include "cweb.h"
#include "cweb_internal.h"

/* In-process pointer sharing (c-web-modules' container). */
struct container {
    pthread_mutex_t lock;
    http_kv_store_t items;
};
static struct container g_container = {.lock = PTHREAD_MUTEX_INITIALIZER};

int container_set(struct container *c, const char *name, void *value)
{
    if (!c || !name)
        return -1;
    pthread_mutex_lock(&c->lock);
    int rc = 0;
    for (size_t i = 0; i < c->items.size; i++) {
        if (strcmp(c->items.entries[i].key, name) == 0) {
            c->items.entries[i].value = value;
            goto out;
        }
    }
    rc = http_kv_insert(&c->items, name, value);
out:
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void *container_get(struct container *c, const char *name)
{
    if (!c || !name)
        return NULL;
    pthread_mutex_lock(&c->lock);
    void *v = http_kv_get(&c->items, name);
    pthread_mutex_unlock(&c->lock);
    return v;
}

int container_remove(struct container *c, const char *name)
{
    if (!c || !name)
        return -1;
    int rc = -1;
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->items.size; i++) {
        if (strcmp(c->items.entries[i].key, name) == 0) {
            free(c->items.entries[i].key);
            c->items.entries[i] = c->items.entries[--c->items.size];
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* Deferred work: SYNC runs on the calling thread once the handler has
 * returned; ASYNC on a detached thread. */
struct scheduler {
    int unused;
};
static struct scheduler g_scheduler;

struct deferred {
    work_t fn;
    void *data;
    struct deferred *next;
};
static __thread struct deferred *t_deferred;

static void *async_trampoline(void *arg)
{
    struct deferred *d = arg;
    d->fn(d->data);
    free(d);
    return NULL;
}

int scheduler_add(struct scheduler *s, work_t work, void *data, worker_state_t state)
{
    (void)s;
    if (!work)
        return -1;
    struct deferred *d = malloc(sizeof(*d));
    if (!d)
        return -1;
    d->fn = work;
    d->data = data;
    if (state == ASYNC) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &a, async_trampoline, d);
        pthread_attr_destroy(&a);
        if (rc != 0) {
            free(d);
            return -1;
        }
        return 0;
    }
    d->next = t_deferred;
    t_deferred = d;
    return 0;
}

void cweb_services_after_handler(void)
{
    /* Run in the order they were added. */
    struct deferred *rev = NULL;
    while (t_deferred) {
        struct deferred *d = t_deferred;
        t_deferred = d->next;
        d->next = rev;
        rev = d;
    }
    while (rev) {
        struct deferred *d = rev;
        rev = d->next;
        d->fn(d->data);
        free(d);
    }
}

int cweb_schedule_after(struct cweb_context *ctx, unsigned delay_ms, work_t fn, void *data)
{
    (void)ctx; (void)delay_ms; (void)fn; (void)data;
    return -1;
}

int cweb_cache_set(struct cweb_context *ctx, const char *key, const void *data, size_t len, int ttl_seconds)
{
    (void)ctx; (void)key; (void)data; (void)len; (void)ttl_seconds;
    return -1;
}

ssize_t cweb_cache_get(struct cweb_context *ctx, const char *key, void *buf, size_t cap)
{
    (void)ctx; (void)key; (void)buf; (void)cap;
    return -1;
}

int cweb_cache_del(struct cweb_context *ctx, const char *key)
{
    (void)ctx; (void)key;
    return -1;
}

static void *no_symbol(void *user_data, const char *module, const char *symbol)
{
    (void)user_data; (void)module; (void)symbol;
    return NULL;
}
static struct symbols g_symbols = {.resolv = no_symbol};

cweb_context_t cweb_g_ctx = {
    .cache = &g_container,
    .scheduler = &g_scheduler,
    .symbols = &g_symbols,
};


void cweb_services_init(const char *data_dir)
{
    (void)data_dir;
}

void cweb_services_retire(void)
{
}
