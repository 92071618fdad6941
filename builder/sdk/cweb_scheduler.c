/*
 * cweb_scheduler.c - c-web-modules' scheduler and cweb's timed work.
 *
 * A struct scheduler owns one thread that runs queued work one item at a
 * time, in the order it was added. ASYNC and SYNC are queued alike: the
 * original ignores the state argument, and modules written for it rely on
 * that single, ordered worker (a later item sees what an earlier one did).
 * ctx->scheduler is one such scheduler per module worker; its thread starts
 * on first use so that a module that never defers work pays nothing.
 *
 * Timed work (cweb_schedule_after) waits in a bounded min-heap watched by one
 * timer thread and joins ctx->scheduler's queue when due. At retire, timed
 * work joins the queue at once, the queue drains (work may still add work
 * meanwhile), and from then on every scheduling call is refused.
 */
#define _GNU_SOURCE
#include "cweb.h"
#include "cweb_internal.h"

#include <errno.h>
#include <time.h>

#define SCHED_QUEUE_MAX 1024     /* ctx->scheduler's capacity */
#define SCHED_TIMERS_MAX 4096

struct scheduler cweb_g_scheduler = {
    .capacity = SCHED_QUEUE_MAX,
    .mutex = PTHREAD_MUTEX_INITIALIZER,
    .work_available = PTHREAD_COND_INITIALIZER,
};

/* ctx->scheduler only: whether its thread runs, and an item is running. */
static pthread_once_t g_start_once = PTHREAD_ONCE_INIT;
static int g_started;
static int g_busy;
static int g_closed;            /* retired: every call is refused */
static pthread_cond_t g_idle = PTHREAD_COND_INITIALIZER;

static void *sched_main(void *arg)
{
    struct scheduler *s = arg;
    pthread_mutex_lock(&s->mutex);
    for (;;) {
        while (!s->head && atomic_load(&s->running))
            pthread_cond_wait(&s->work_available, &s->mutex);
        /* Stopped, drain or not: as in c-web-modules, the thread leaves
         * only once what was queued before the stop has run. */
        if (!s->head)
            break;
        struct work *w = s->head;
        s->head = w->next;
        if (!s->head)
            s->tail = NULL;
        s->size--;
        if (s == &cweb_g_scheduler)
            g_busy = 1;
        pthread_mutex_unlock(&s->mutex);
        w->work(w->data);
        free(w);
        pthread_mutex_lock(&s->mutex);
        if (s == &cweb_g_scheduler) {
            g_busy = 0;
            if (!s->head)
                pthread_cond_broadcast(&g_idle);
        }
    }
    pthread_mutex_unlock(&s->mutex);
    return NULL;
}

static int start(struct scheduler *s)
{
    atomic_store(&s->running, 1);
    atomic_store(&s->accepting, 1);
    atomic_store(&s->draining, 0);
    return pthread_create(&s->thread, NULL, sched_main, s) == 0 ? 0 : -1;
}

static void start_ctx_scheduler(void)
{
    g_started = start(&cweb_g_scheduler) == 0;
}

/* The module's own schedulers start in scheduler_init; ctx->scheduler here. */
static int ready(struct scheduler *s)
{
    if (s != &cweb_g_scheduler)
        return 1;
    if (g_closed) {
        errno = ECANCELED;
        return 0;
    }
    pthread_once(&g_start_once, start_ctx_scheduler);
    return g_started;
}

int scheduler_init(struct scheduler *s, size_t capacity)
{
    if (!s || s == &cweb_g_scheduler)
        return -1;
    memset(s, 0, sizeof(*s));
    s->capacity = capacity;
    if (pthread_mutex_init(&s->mutex, NULL) != 0)
        return -1;
    if (pthread_cond_init(&s->work_available, NULL) != 0 || start(s) != 0) {
        pthread_mutex_destroy(&s->mutex);
        return -1;
    }
    return 0;
}

/* With s->mutex held. bounded: honour the capacity (timed work does not:
 * the timer heap bounds it). */
static int enqueue_locked(struct scheduler *s, work_t work, void *data, int bounded)
{
    if (!atomic_load(&s->accepting)) {
        errno = ECANCELED;
        return -1;
    }
    if (bounded && s->capacity && s->size >= s->capacity) {
        errno = EAGAIN;
        return -1;
    }
    struct work *w = malloc(sizeof(*w));
    if (!w)
        return -1;
    *w = (struct work){work, data, NULL};
    if (s->tail)
        s->tail->next = w;
    else
        s->head = w;
    s->tail = w;
    s->size++;
    pthread_cond_signal(&s->work_available);
    return 0;
}

int scheduler_add(struct scheduler *s, work_t work, void *data, worker_state_t state)
{
    (void)state;
    if (!s || !work) {
        errno = EINVAL;
        return -1;
    }
    if (!ready(s)) {
        if (errno != ECANCELED)
            errno = ENOMEM;
        return -1;
    }
    pthread_mutex_lock(&s->mutex);
    int rc = enqueue_locked(s, work, data, 1);
    pthread_mutex_unlock(&s->mutex);
    return rc;
}

void scheduler_request_stop(struct scheduler *s, int drain)
{
    if (!s || !ready(s))
        return;
    pthread_mutex_lock(&s->mutex);
    atomic_store(&s->accepting, 0);
    atomic_store(&s->draining, drain ? 1 : 0);
    atomic_store(&s->running, 0);
    pthread_cond_broadcast(&s->work_available);
    pthread_mutex_unlock(&s->mutex);
}

int scheduler_pending_count(struct scheduler *s)
{
    if (!s)
        return 0;
    pthread_mutex_lock(&s->mutex);
    int n = (int)s->size;
    pthread_mutex_unlock(&s->mutex);
    return n;
}

/* Stops accepting, lets the queued work run (as c-web-modules' thread
 * does), and joins the thread. ctx->scheduler is the server's to stop. */
void scheduler_shutdown(struct scheduler *s)
{
    if (!s || s == &cweb_g_scheduler)
        return;
    scheduler_request_stop(s, 0);
    pthread_join(s->thread, NULL);
    while (s->head) {
        struct work *w = s->head;
        s->head = w->next;
        free(w);
    }
    s->tail = NULL;
    s->size = 0;
    pthread_cond_destroy(&s->work_available);
    pthread_mutex_destroy(&s->mutex);
}

void cweb_services_after_handler(void)
{
    /* Nothing since SYNC work joined the scheduler's queue; the hook stays
     * for the callers in the glue. */
}

/* ------------------------------------------------------------------ */
/* timed work                                                          */

struct timer {
    uint64_t due_ns;
    uint64_t seq;
    work_t fn;
    void *data;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    struct timer heap[SCHED_TIMERS_MAX];
    size_t n;
    uint64_t seq;
    int thread;
    int retiring;
} T = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int timer_before(const struct timer *a, const struct timer *b)
{
    return a->due_ns < b->due_ns || (a->due_ns == b->due_ns && a->seq < b->seq);
}

static void heap_push(struct timer t)
{
    size_t i = T.n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!timer_before(&t, &T.heap[p]))
            break;
        T.heap[i] = T.heap[p];
        i = p;
    }
    T.heap[i] = t;
}

static struct timer heap_pop(void)
{
    struct timer top = T.heap[0];
    struct timer last = T.heap[--T.n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= T.n)
            break;
        if (c + 1 < T.n && timer_before(&T.heap[c + 1], &T.heap[c]))
            c++;
        if (!timer_before(&T.heap[c], &last))
            break;
        T.heap[i] = T.heap[c];
        i = c;
    }
    if (T.n)
        T.heap[i] = last;
    return top;
}

/* Hands due work to ctx->scheduler (T.lock held). */
static void queue_timer(struct timer t)
{
    struct scheduler *s = &cweb_g_scheduler;
    if (!ready(s))
        return;
    pthread_mutex_lock(&s->mutex);
    enqueue_locked(s, t.fn, t.data, 0);
    pthread_mutex_unlock(&s->mutex);
}

static void *timer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&T.lock);
    for (;;) {
        if (T.n == 0 || T.retiring) {
            pthread_cond_wait(&T.cv, &T.lock);
            continue;
        }
        uint64_t due = T.heap[0].due_ns;
        if (due > now_ns()) {
            struct timespec ts = {(time_t)(due / 1000000000ull), (long)(due % 1000000000ull)};
            pthread_cond_timedwait(&T.cv, &T.lock, &ts);
            continue;
        }
        queue_timer(heap_pop());
    }
    return NULL;
}

int cweb_schedule_after(struct cweb_context *ctx, unsigned delay_ms, work_t fn, void *data)
{
    (void)ctx;
    if (!fn) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&T.lock);
    int rc = -1;
    if (T.retiring) {
        errno = ECANCELED;
        goto out;
    }
    if (T.n == SCHED_TIMERS_MAX) {
        errno = EAGAIN;
        goto out;
    }
    if (!T.thread) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&t, &a, timer_main, NULL);
        pthread_attr_destroy(&a);
        if (failed) {
            errno = ENOMEM;
            goto out;
        }
        T.thread = 1;
    }
    struct timer t = {now_ns() + (uint64_t)delay_ms * 1000000ull, T.seq++, fn, data};
    heap_push(t);
    if (T.heap[0].seq == t.seq)
        pthread_cond_signal(&T.cv);
    rc = 0;
out:
    pthread_mutex_unlock(&T.lock);
    return rc;
}

void cweb_scheduler_setup(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&T.cv, &a);
    pthread_condattr_destroy(&a);
}

void cweb_services_retire(void)
{
    /* Timed work joins the queue now, in due order. */
    pthread_mutex_lock(&T.lock);
    T.retiring = 1;
    while (T.n)
        queue_timer(heap_pop());
    pthread_mutex_unlock(&T.lock);

    struct scheduler *s = &cweb_g_scheduler;
    if (!g_started)
        goto closed;
    pthread_mutex_lock(&s->mutex);
    while (s->head || g_busy)
        pthread_cond_wait(&g_idle, &s->mutex);
    pthread_mutex_unlock(&s->mutex);
    scheduler_request_stop(s, 1);
    pthread_join(s->thread, NULL);
closed:
    pthread_mutex_lock(&s->mutex);
    g_closed = 1;
    atomic_store(&s->accepting, 0);
    pthread_mutex_unlock(&s->mutex);
}
