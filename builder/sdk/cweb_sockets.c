/*
 * cweb_sockets.c - WebSocket callbacks and the outbound events channel.
 *
 * The api owns the client sockets. A worker sees a connection as a
 * websocket_t created on WS_OPEN and freed after on_close; the pointer is
 * stable for the connection's life in this worker. ws->send and ws->close
 * may be called from any thread: they write a frame on the events channel,
 * which the api turns into a socket send. After a hot swap the api ignores
 * frames from the old worker for connections it has moved to the new one.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <time.h>
#include "cweb.h"
#include "cweb_wire.h"
#include "cweb_internal.h"

static pthread_mutex_t events_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t events_attached = PTHREAD_COND_INITIALIZER;
static int events_fd = -1;
static int events_ever_attached;

/* How long a send made before the channel is up waits for it. The api opens
 * the channel before any data connection, but the worker thread that reads
 * its first frame may run after a thread already delivering WS_OPEN. */
#define EVENTS_ATTACH_WAIT_MS 2000

void cweb_events_attach(int fd)
{
    pthread_mutex_lock(&events_lock);
    events_fd = fd;
    events_ever_attached = 1;
    pthread_cond_broadcast(&events_attached);
    pthread_mutex_unlock(&events_lock);
}

void cweb_events_detach(int fd)
{
    pthread_mutex_lock(&events_lock);
    if (events_fd == fd)
        events_fd = -1;
    pthread_mutex_unlock(&events_lock);
}

/* Called with events_lock held: waits (bounded) for the first attach only.
 * Once the api has dropped the channel, sends fail at once. */
static void events_wait_first_attach_locked(void)
{
    if (events_fd >= 0 || events_ever_attached)
        return;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += EVENTS_ATTACH_WAIT_MS / 1000;
    until.tv_nsec += (long)(EVENTS_ATTACH_WAIT_MS % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (events_fd < 0 && !events_ever_attached)
        if (pthread_cond_timedwait(&events_attached, &events_lock, &until) != 0)
            break;
}

/* One frame: length, head, then up to two tail parts. */
static int events_send_parts(struct buf *head, const void *a, size_t a_len, const void *b, size_t b_len)
{
    size_t total64 = head->len + a_len + b_len;
    if (total64 > UINT32_MAX)
        return -1;
    uint32_t total = (uint32_t)total64;
    struct iovec iov[4] = {{&total, 4}, {head->p, head->len}, {(void *)a, a_len}, {(void *)b, b_len}};
    int cnt = b_len ? 4 : a_len ? 3 : 2;
    pthread_mutex_lock(&events_lock);
    events_wait_first_attach_locked();
    int rc = events_fd < 0 ? -1 : write_all_iov(events_fd, iov, cnt);
    pthread_mutex_unlock(&events_lock);
    return rc;
}

int cweb_events_send(struct buf *head, const void *tail, size_t tail_len)
{
    return events_send_parts(head, tail, tail_len, NULL, 0);
}

int cweb_events_frame(uint8_t type, struct reader *r)
{
    if (type == CWEB_F_JOB_CANCEL) {
        get_u8(r);
        get_u16(r);
        const char *uuid = get_str(r, NULL);
        if (r->bad)
            return -1;
        cweb_job_cancel(uuid);
        return 0;
    }
    if (type == CWEB_F_REPLY) {
        uint32_t seq = get_u32(r);
        int32_t rc = (int32_t)get_u32(r);
        const char *value = get_str(r, NULL);
        if (r->bad)
            return -1;
        cweb_jobs_reply(seq, rc, value);
        return 0;
    }
    return -1;
}

int cweb_send_ack(int fd)
{
    unsigned char frame[5] = {1, 0, 0, 0, CWEB_F_ACK};
    struct iovec iov = {frame, sizeof(frame)};
    return write_all_iov(fd, &iov, 1);
}

/* ---- connection registry ---- */

#define WS_BUCKETS 1024

struct ws_node {
    websocket_t ws;
    struct ws_node *next;
};

static pthread_mutex_t ws_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ws_node *ws_table[WS_BUCKETS];

static struct ws_node *ws_find_locked(uint64_t id)
{
    for (struct ws_node *n = ws_table[id % WS_BUCKETS]; n; n = n->next)
        if (n->ws.id == id)
            return n;
    return NULL;
}

static int ws_emit(websocket_t *ws, uint8_t type, int binary, const void *data, size_t len)
{
    static const char nul = 0;
    /* Frame lengths are u32: leave room for the head and the NUL. */
    if (len > UINT32_MAX - 64)
        return -1;
    struct buf head = {0};
    int rc = -1;
    if (put_u8(&head, type) || put_u8(&head, (uint8_t)binary) || put_u16(&head, 0) || put_u64(&head, ws->id) ||
        put_u32(&head, (uint32_t)len))
        goto out;
    if (type == CWEB_F_WS_SEND)
        /* data, then the NUL the string encoding promises; no copy of data */
        rc = events_send_parts(&head, data, len, &nul, 1);
    else
        rc = cweb_events_send(&head, NULL, 0);
out:
    free(head.p);
    return rc;
}

static int ws_send_text(websocket_t *ws, const char *message, size_t length)
{
    if (!ws || (!message && length))
        return -1;
    return ws_emit(ws, CWEB_F_WS_SEND, 0, message, length);
}

static int ws_send_binary(websocket_t *ws, const void *data, size_t length)
{
    if (!ws || (!data && length))
        return -1;
    return ws_emit(ws, CWEB_F_WS_SEND, 1, data, length);
}

static int ws_close(websocket_t *ws)
{
    if (!ws)
        return -1;
    return ws_emit(ws, CWEB_F_WS_CLOSE_REQ, 0, NULL, 0);
}

static websocket_t *ws_open(uint64_t id)
{
    pthread_mutex_lock(&ws_lock);
    struct ws_node *n = ws_find_locked(id);
    if (!n) {
        n = calloc(1, sizeof(*n));
        if (n) {
            n->ws.id = id;
            n->ws.client_fd = (int)(id & 0x7fffffff);
            n->ws.send = ws_send_text;
            n->ws.send_binary = ws_send_binary;
            n->ws.close = ws_close;
            n->next = ws_table[id % WS_BUCKETS];
            ws_table[id % WS_BUCKETS] = n;
        }
    }
    pthread_mutex_unlock(&ws_lock);
    return n ? &n->ws : NULL;
}

static websocket_t *ws_lookup(uint64_t id)
{
    pthread_mutex_lock(&ws_lock);
    struct ws_node *n = ws_find_locked(id);
    pthread_mutex_unlock(&ws_lock);
    return n ? &n->ws : NULL;
}

static void ws_forget(uint64_t id)
{
    pthread_mutex_lock(&ws_lock);
    struct ws_node **pp = &ws_table[id % WS_BUCKETS];
    while (*pp && (*pp)->ws.id != id)
        pp = &(*pp)->next;
    struct ws_node *n = *pp;
    if (n)
        *pp = n->next;
    pthread_mutex_unlock(&ws_lock);
    if (n)
        free(n->ws.session);
    free(n);
}

/* WS_OPEN carries the path, then NUL and the session (the handshake's
 * "?id=<id>&since_event_id=<n>" as "<id>|<n>") when there is one. The
 * session is set before on_open and kept until after on_close. */
static void ws_set_session(websocket_t *ws, const char *data, size_t len)
{
    const char *nul = memchr(data, '\0', len);
    if (!nul || ws->session)
        return;
    ws->session = strndup(nul + 1, len - (size_t)(nul + 1 - data));
}

int cweb_ws_frame(int fd, uint8_t type, struct reader *r, struct buf *out)
{
    (void)out;
    uint8_t binary = get_u8(r);
    uint16_t idx = get_u16(r);
    uint64_t id = get_u64(r);
    size_t len = 0;
    const char *data = "";
    if (type == CWEB_F_WS_MSG || type == CWEB_F_WS_OPEN)
        data = get_str(r, &len);
    if (r->bad || &config == NULL || idx >= config.ws_size || idx >= MAX_WEBSOCKETS)
        return -1;
    const websocket_info_t *info = &config.websockets[idx];
    websocket_t *ws;
    cweb_crash_context("websocket", info->path);
    switch (type) {
    case CWEB_F_WS_OPEN:
        ws = ws_open(id);
        if (ws)
            ws_set_session(ws, data, len);
        if (ws && info->on_open)
            info->on_open(&cweb_g_ctx, ws);
        break;
    case CWEB_F_WS_MSG:
        /* A message for a connection this worker never saw opened cannot
         * happen: the api always delivers WS_OPEN first. */
        ws = ws_lookup(id);
        if (!ws)
            ws = ws_open(id);
        if (ws) {
            ws->binary = binary;
            if (info->on_message)
                info->on_message(&cweb_g_ctx, ws, data, len);
        }
        break;
    case CWEB_F_WS_CLOSE:
        ws = ws_lookup(id);
        if (ws) {
            if (info->on_close)
                info->on_close(&cweb_g_ctx, ws);
            ws_forget(id);
        }
        break;
    default:
        cweb_crash_context(NULL, NULL);
        return -1;
    }
    cweb_crash_context(NULL, NULL);
    cweb_services_after_handler();
    return cweb_send_ack(fd);
}
