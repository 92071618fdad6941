/*
 * cweb_jobs.c - running a module's jobs, and jobs_create() for modules.
 *
 * The api sends JOB_RUN on a job connection; the job runs on the thread
 * serving that connection, streams its events back on the same connection
 * (so they arrive in order, before the end), and finishes with JOB_END
 * carrying the result or error. Cancellation arrives on the events channel.
 */
#define _GNU_SOURCE
#include "cweb.h"
#include "cweb_wire.h"
#include "cweb_internal.h"

#include <time.h>

/* Frame lengths are u32: anything near that would wrap and desynchronise the
 * connection. The api's own caps (CWEB_JOB_MAX_*) are far below this. */
#define JOB_TEXT_MAX ((size_t)1 << 30)

struct running_job {
    job_ctx_t pub;              /* must stay first: job_ctx_t * casts back */
    char uuid[UUID_STR_LEN];
    int fd;
    int index;
    volatile int canceled;
    int outcome;
    char *data;
    pthread_mutex_t lock;       /* one writer at a time on fd, and data */
    struct running_job *next;
};

static pthread_mutex_t jobs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct running_job *running;

static int job_emit(job_ctx_t *job, const char *type, const char *data_json)
{
    struct running_job *j = (struct running_job *)job;
    if (!j || !type)
        return -1;
    const char *data = data_json ? data_json : "null";
    size_t type_len = strlen(type), data_len = strlen(data);
    if (type_len > JOB_TEXT_MAX || data_len > JOB_TEXT_MAX)
        return -1;
    struct buf out = {0};
    int rc = -1;
    pthread_mutex_lock(&j->lock);
    if (put_u8(&out, CWEB_F_JOB_EVENT) == 0 && put_str(&out, type, type_len) == 0 &&
        put_str(&out, data, data_len) == 0)
        rc = send_frame(j->fd, &out, NULL, 0);
    pthread_mutex_unlock(&j->lock);
    free(out.p);
    return rc;
}

/* The first set_result/set_error decides the outcome, as in c-web-modules:
 * later calls change nothing and return -1. */
static int job_finish(job_ctx_t *job, int outcome, const char *text)
{
    struct running_job *j = (struct running_job *)job;
    if (!j)
        return -1;
    char *copy = strdup(text ? text : "");
    if (!copy)
        return -1;
    int rc = -1;
    pthread_mutex_lock(&j->lock);
    if (j->outcome == CWEB_OUTCOME_NONE) {
        j->data = copy;
        j->outcome = outcome;
        copy = NULL;
        rc = 0;
    }
    pthread_mutex_unlock(&j->lock);
    free(copy);
    return rc;
}

static int job_set_result(job_ctx_t *job, const char *result_json)
{
    return job_finish(job, CWEB_OUTCOME_RESULT, result_json ? result_json : "null");
}

static int job_set_error(job_ctx_t *job, const char *error_text)
{
    return job_finish(job, CWEB_OUTCOME_ERROR, error_text ? error_text : "error");
}

static int job_is_canceled(job_ctx_t *job)
{
    struct running_job *j = (struct running_job *)job;
    return j ? __atomic_load_n(&j->canceled, __ATOMIC_ACQUIRE) : 0;
}

static int job_progress(job_ctx_t *job, double done, double total)
{
    char data[160];
    double pct = total > 0 ? done * 100.0 / total : 0.0;
    snprintf(data, sizeof(data), "{\"done\":%.17g,\"total\":%.17g,\"percent\":%.4g}", done, total, pct);
    return job_emit(job, "progress", data);
}

int cweb_job_run(int fd, struct reader *r, struct buf *out)
{
    get_u8(r);
    uint16_t idx = get_u16(r);
    uint32_t attempt = get_u32(r);
    const char *uuid = get_str(r, NULL);
    size_t payload_len = 0;
    const char *payload = get_str(r, &payload_len);
    if (r->bad)
        return -1;

    struct running_job *j = calloc(1, sizeof(*j));
    if (!j)
        return -1;
    snprintf(j->uuid, sizeof(j->uuid), "%s", uuid);
    j->fd = fd;
    j->index = idx;
    j->outcome = CWEB_OUTCOME_NONE;
    pthread_mutex_init(&j->lock, NULL);
    j->pub.job_uuid = j->uuid;
    j->pub.emit_event = job_emit;
    j->pub.set_result = job_set_result;
    j->pub.set_error = job_set_error;
    j->pub.is_canceled = job_is_canceled;
    j->pub.progress = job_progress;
    j->pub.attempt = (int)attempt;
    j->pub.host_ = j;

    pthread_mutex_lock(&jobs_lock);
    j->next = running;
    running = j;
    pthread_mutex_unlock(&jobs_lock);

    int rc = -1;
    if (&config != NULL && idx < config.job_size && idx < MAX_JOBS && config.jobs[idx].run) {
        job_payload_t p = {payload, payload_len};
        cweb_crash_context("job", config.jobs[idx].name);
        rc = config.jobs[idx].run(&cweb_g_ctx, &p, &j->pub);
        cweb_crash_context(NULL, NULL);
    } else {
        job_set_error(&j->pub, "job not found in module");
    }
    cweb_services_after_handler();

    pthread_mutex_lock(&jobs_lock);
    for (struct running_job **pp = &running; *pp; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    }
    pthread_mutex_unlock(&jobs_lock);

    const char *data = j->data ? j->data : "";
    if (strlen(data) > JOB_TEXT_MAX) {
        j->outcome = CWEB_OUTCOME_ERROR;
        data = "result_too_large: the job's result or error is over 1 GiB";
    }
    out->len = 0;
    int wrc = -1;
    pthread_mutex_lock(&j->lock);
    if (put_u8(out, CWEB_F_JOB_END) == 0 && put_u8(out, (uint8_t)j->outcome) == 0 &&
        put_u32(out, (uint32_t)rc) == 0 && put_str(out, data, strlen(data)) == 0)
        wrc = send_frame(fd, out, NULL, 0);
    pthread_mutex_unlock(&j->lock);
    pthread_mutex_destroy(&j->lock);
    free(j->data);
    free(j);
    return wrc;
}

/* The api may repeat a cancel request (it can overtake the job's start);
 * only the first one that finds the job running sets the flag and calls the
 * module's hook, so the hook runs at most once per attempt. */
void cweb_job_cancel(const char *uuid)
{
    int idx = -1;
    pthread_mutex_lock(&jobs_lock);
    for (struct running_job *j = running; j; j = j->next) {
        if (strcmp(j->uuid, uuid) == 0) {
            if (__atomic_exchange_n(&j->canceled, 1, __ATOMIC_ACQ_REL) == 0)
                idx = j->index;
            break;
        }
    }
    pthread_mutex_unlock(&jobs_lock);
    /* The hook runs outside the lock: it may take the module's own locks. */
    if (idx >= 0 && &config != NULL && idx < config.job_size && idx < MAX_JOBS && config.jobs[idx].cancel)
        config.jobs[idx].cancel(&cweb_g_ctx, uuid);
}

/* ---- jobs_create(): a synchronous round trip to the api ---- */

struct create_wait {
    uint32_t seq;
    int done;
    int32_t rc;
    char uuid[UUID_STR_LEN];
    struct create_wait *next;
};

static pthread_mutex_t create_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t create_cond = PTHREAD_COND_INITIALIZER;
static struct create_wait *create_waits;
static uint32_t create_seq;

void cweb_jobs_reply(uint32_t seq, int32_t rc, const char *value)
{
    pthread_mutex_lock(&create_lock);
    for (struct create_wait *w = create_waits; w; w = w->next) {
        if (w->seq == seq) {
            w->rc = rc;
            snprintf(w->uuid, sizeof(w->uuid), "%s", value);
            w->done = 1;
            break;
        }
    }
    pthread_cond_broadcast(&create_cond);
    pthread_mutex_unlock(&create_lock);
}

int jobs_create(const char *job_name, const char *payload_json, cweb_uuid_t *job_uuid_out)
{
    if (!job_name)
        return -1;
    const char *payload = payload_json ? payload_json : "{}";
    struct create_wait w = {0};
    pthread_mutex_lock(&create_lock);
    w.seq = ++create_seq;
    w.next = create_waits;
    create_waits = &w;
    pthread_mutex_unlock(&create_lock);

    struct buf head = {0};
    int rc = -1;
    if (put_u8(&head, CWEB_F_JOBS_CREATE) == 0 && put_u32(&head, w.seq) == 0 &&
        put_str(&head, job_name, strlen(job_name)) == 0 && put_str(&head, payload, strlen(payload)) == 0)
        rc = cweb_events_send(&head, NULL, 0);
    free(head.p);

    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    pthread_mutex_lock(&create_lock);
    while (rc == 0 && !w.done) {
        if (pthread_cond_timedwait(&create_cond, &create_lock, &deadline) != 0)
            break;
    }
    for (struct create_wait **pp = &create_waits; *pp; pp = &(*pp)->next) {
        if (*pp == &w) {
            *pp = w.next;
            break;
        }
    }
    pthread_mutex_unlock(&create_lock);
    if (rc != 0 || !w.done || w.rc != 0)
        return -1;
    if (job_uuid_out)
        snprintf(job_uuid_out->str, sizeof(job_uuid_out->str), "%s", w.uuid);
    return 0;
}
