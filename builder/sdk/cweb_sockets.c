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
#include "cweb.h"
#include "cweb_wire.h"
#include "cweb_internal.h"

static pthread_mutex_t events_lock = PTHREAD_MUTEX_INITIALIZER;
static int events_fd = -1;

void cweb_events_attach(int fd)
{
    pthread_mutex_lock(&events_lock);
    events_fd = fd;
    pthread_mutex_unlock(&events_lock);
}

void cweb_events_detach(int fd)
{
    pthread_mutex_lock(&events_lock);
    if (events_fd == fd)
        events_fd = -1;
    pthread_mutex_unlock(&events_lock);
}

int cweb_events_send(struct buf *head, const void *tail, size_t tail_len)
{
    uint32_t total = (uint32_t)(head->len + tail_len);
    struct iovec iov[3] = {{&total, 4}, {head->p, head->len}, {(void *)tail, tail_len}};
    pthread_mutex_lock(&events_lock);
    int rc = events_fd < 0 ? -1 : write_all_iov(events_fd, iov, tail_len ? 3 : 2);
    pthread_mutex_unlock(&events_lock);
    return rc;
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
    struct buf head = {0};
    int rc = -1;
    if (put_u8(&head, type) || put_u8(&head, (uint8_t)binary) || put_u16(&head, 0) || put_u64(&head, ws->id) ||
        put_u32(&head, (uint32_t)len))
        goto out;
    if (type == CWEB_F_WS_SEND) {
        /* data, then the NUL the string encoding promises */
        struct buf tail = {0};
        if (buf_put(&tail, data, len) == 0 && put_u8(&tail, 0) == 0)
            rc = cweb_events_send(&head, tail.p, tail.len);
        free(tail.p);
    } else {
        rc = cweb_events_send(&head, NULL, 0);
    }
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
    free(n);
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
    switch (type) {
    case CWEB_F_WS_OPEN:
        ws = ws_open(id);
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
        return -1;
    }
    cweb_services_after_handler();
    return cweb_send_ack(fd);
}
