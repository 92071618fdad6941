/*
 * cweb_map.c - struct map, the container (ctx->cache) built on it, and the
 * UUID helpers: the plain data structures of c-web-modules' map.h,
 * container.h and uuid.h, with their return conventions.
 *
 * The map is open addressing with linear probing; removal leaves a
 * tombstone so that probe chains stay intact, and a rehash (growth, or
 * too many tombstones) drops them. Keys are copied; values are the
 * caller's pointers and never freed here.
 */
#define _GNU_SOURCE
#include "cweb.h"
#include "cweb_internal.h"

#define MAP_MIN_CAPACITY 8u
/* Rehash once occupied + tombstones reach 3/4 of the slots. */
#define MAP_LOAD_NUM 3u
#define MAP_LOAD_DEN 4u

static uint64_t key_hash(const char *key)
{
    uint64_t h = 1469598103934665603ull;    /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 1099511628211ull;
    }
    return h;
}

static size_t round_capacity(size_t want)
{
    size_t cap = MAP_MIN_CAPACITY;
    while (cap < want && cap < (SIZE_MAX >> 2))
        cap <<= 1;
    return cap;
}

struct map *map_create(size_t initial_capacity)
{
    struct map *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->capacity = round_capacity(initial_capacity);
    m->entries = calloc(m->capacity, sizeof(*m->entries));
    if (!m->entries) {
        free(m);
        return NULL;
    }
    return m;
}

void map_destroy(struct map *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->capacity; i++)
        if (m->entries[i].state == MAP_ENTRY_OCCUPIED)
            free(m->entries[i].key);
    free(m->entries);
    free(m);
}

/* The slot holding key, or SIZE_MAX. */
static size_t find_slot(const struct map *m, const char *key, uint64_t h)
{
    if (!m->capacity)
        return SIZE_MAX;
    size_t mask = m->capacity - 1;
    for (size_t n = 0, i = h & mask; n < m->capacity; n++, i = (i + 1) & mask) {
        const struct map_entry *e = &m->entries[i];
        if (e->state == MAP_ENTRY_EMPTY)
            return SIZE_MAX;
        if (e->state == MAP_ENTRY_OCCUPIED && e->hash == h && strcmp(e->key, key) == 0)
            return i;
    }
    return SIZE_MAX;
}

static map_error_t rehash(struct map *m, size_t capacity)
{
    struct map_entry *fresh = calloc(capacity, sizeof(*fresh));
    if (!fresh)
        return MAP_ERR;
    size_t mask = capacity - 1;
    for (size_t i = 0; i < m->capacity; i++) {
        struct map_entry *e = &m->entries[i];
        if (e->state != MAP_ENTRY_OCCUPIED)
            continue;
        size_t j = e->hash & mask;
        while (fresh[j].state == MAP_ENTRY_OCCUPIED)
            j = (j + 1) & mask;
        fresh[j] = *e;
    }
    free(m->entries);
    m->entries = fresh;
    m->capacity = capacity;
    m->tombstones = 0;
    return MAP_OK;
}

/* Parenthesised names: cweb.h makes map_insert/map_get dispatch macros. */
map_error_t (map_insert)(struct map *m, const char *key, void *value)
{
    if (!m || !key)
        return MAP_ERR;
    uint64_t h = key_hash(key);
    size_t at = find_slot(m, key, h);
    if (at != SIZE_MAX) {
        m->entries[at].value = value;
        return MAP_OK;
    }
    if ((m->size + m->tombstones + 1) * MAP_LOAD_DEN > m->capacity * MAP_LOAD_NUM) {
        /* Double when live entries fill half the allowed load; otherwise
         * a rehash at the same size just drops the tombstones. */
        size_t cap = m->capacity ? m->capacity : MAP_MIN_CAPACITY;
        if ((m->size + 1) * 2 * MAP_LOAD_DEN > cap * MAP_LOAD_NUM) {
            if (cap > SIZE_MAX / 4 / sizeof(struct map_entry))
                return MAP_FULL;
            cap <<= 1;
        }
        if (rehash(m, cap) != MAP_OK)
            return MAP_ERR;
    }
    size_t mask = m->capacity - 1;
    size_t i = h & mask;
    while (m->entries[i].state == MAP_ENTRY_OCCUPIED)
        i = (i + 1) & mask;
    char *k = strdup(key);
    if (!k)
        return MAP_ERR;
    if (m->entries[i].state == MAP_ENTRY_TOMBSTONE)
        m->tombstones--;
    m->entries[i] = (struct map_entry){k, value, h, MAP_ENTRY_OCCUPIED};
    m->size++;
    return MAP_OK;
}

void *(map_get)(const struct map *m, const char *key)
{
    if (!m || !key)
        return NULL;
    size_t at = find_slot(m, key, key_hash(key));
    return at == SIZE_MAX ? NULL : m->entries[at].value;
}

map_error_t map_remove(struct map *m, const char *key)
{
    if (!m || !key)
        return MAP_ERR;
    size_t at = find_slot(m, key, key_hash(key));
    if (at == SIZE_MAX)
        return MAP_KEY_NOT_FOUND;
    free(m->entries[at].key);
    m->entries[at] = (struct map_entry){NULL, NULL, 0, MAP_ENTRY_TOMBSTONE};
    m->size--;
    m->tombstones++;
    return MAP_OK;
}

size_t map_size(const struct map *m)
{
    return m ? m->size : 0;
}

/* ------------------------------------------------------------------ */
/* container                                                           */

struct container cweb_g_container = {.mutex = PTHREAD_MUTEX_INITIALIZER};

int container_init(struct container *c, size_t initial_capacity)
{
    if (!c)
        return -1;
    c->data = map_create(initial_capacity);
    if (!c->data)
        return -1;
    if (pthread_mutex_init(&c->mutex, NULL) != 0) {
        map_destroy(c->data);
        c->data = NULL;
        return -1;
    }
    return 0;
}

void container_shutdown(struct container *c)
{
    if (!c || c == &cweb_g_container)
        return;
    map_destroy(c->data);
    c->data = NULL;
    pthread_mutex_destroy(&c->mutex);
}

/* ctx->cache's map is made on first use (c->mutex held). */
static int container_ready(struct container *c)
{
    if (!c->data)
        c->data = map_create(32);
    return c->data != NULL;
}

map_error_t container_set(struct container *c, const char *name, void *value)
{
    if (!c || !name || !value)
        return MAP_ERR;
    pthread_mutex_lock(&c->mutex);
    map_error_t rc = container_ready(c) ? (map_insert)(c->data, name, value) : MAP_ERR;
    pthread_mutex_unlock(&c->mutex);
    return rc;
}

void *container_get(struct container *c, const char *name)
{
    if (!c || !name)
        return NULL;
    pthread_mutex_lock(&c->mutex);
    void *v = c->data ? (map_get)(c->data, name) : NULL;
    pthread_mutex_unlock(&c->mutex);
    return v;
}

map_error_t container_remove(struct container *c, const char *name)
{
    if (!c || !name)
        return MAP_ERR;
    pthread_mutex_lock(&c->mutex);
    map_error_t rc = c->data ? map_remove(c->data, name) : MAP_KEY_NOT_FOUND;
    pthread_mutex_unlock(&c->mutex);
    return rc;
}

/* ------------------------------------------------------------------ */
/* UUIDs                                                               */

static int uuid_text_ok(const char *s)
{
    if (!s || strnlen(s, UUID_STR_LEN) != UUID_STR_LEN - 1)
        return 0;
    for (int i = 0; i < UUID_STR_LEN - 1; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return 0;
    }
    return 1;
}

void uuid_clear(cweb_uuid_t *uuid)
{
    if (uuid)
        uuid->str[0] = '\0';
}

int uuid_from_string(cweb_uuid_t *uuid, const char *str)
{
    if (!uuid || !uuid_text_ok(str))
        return -1;
    memcpy(uuid->str, str, UUID_STR_LEN - 1);
    uuid->str[UUID_STR_LEN - 1] = '\0';
    return 0;
}

int uuid_is_valid(const cweb_uuid_t *uuid)
{
    return uuid && memchr(uuid->str, '\0', UUID_STR_LEN) && uuid_text_ok(uuid->str);
}

int uuid_equal(const cweb_uuid_t *a, const cweb_uuid_t *b)
{
    return a && b && strncmp(a->str, b->str, UUID_STR_LEN) == 0;
}

const char *uuid_c_str(const cweb_uuid_t *uuid)
{
    return uuid ? uuid->str : "";
}
