/*
 * cweb_frame.h - internal to the glue: buffers and the frame encoding of
 * cweb_wire.h. Everything here is static inline so each glue source can use
 * it without exporting anything.
 */
#ifndef CWEB_FRAME_H
#define CWEB_FRAME_H

#include "cweb.h"
#include <errno.h>
#include <unistd.h>
#include <sys/uio.h>

struct buf {
    char *p;
    size_t len, cap;
};

static inline int buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(struct buf *b, const void *src, size_t n)
{
    if (buf_reserve(b, n) != 0)
        return -1;
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static inline int put_u8(struct buf *b, uint8_t v) { return buf_put(b, &v, 1); }
static inline int put_u16(struct buf *b, uint16_t v) { return buf_put(b, &v, 2); }
static inline int put_u32(struct buf *b, uint32_t v) { return buf_put(b, &v, 4); }
static inline int put_u64(struct buf *b, uint64_t v) { return buf_put(b, &v, 8); }

static inline int put_str(struct buf *b, const char *s, size_t n)
{
    if (put_u32(b, (uint32_t)n) || buf_put(b, s, n))
        return -1;
    return put_u8(b, 0);
}

/* Some bytes (> 0), or -1 at end of stream or on an error; retries EINTR. */
static inline ssize_t read_some(int fd, void *dst, size_t n)
{
    for (;;) {
        ssize_t r = read(fd, dst, n);
        if (r > 0)
            return r;
        if (r < 0 && errno == EINTR)
            continue;
        return -1;
    }
}

static inline int read_full(int fd, void *dst, size_t n)
{
    char *p = dst;
    while (n) {
        ssize_t r = read_some(fd, p, n);
        if (r < 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Reads through a buffer: the api pipelines requests on a connection, so
 * one read() usually brings several frames (two read() calls per frame
 * otherwise). Reads as large as the buffer go straight to dst. */
struct rbuf {
    char *p;
    size_t start, end, cap;
};

static inline int rbuf_read(int fd, struct rbuf *b, void *dst, size_t n)
{
    char *out = dst;
    while (n) {
        if (b->start == b->end) {
            if (n >= b->cap)
                return read_full(fd, out, n);
            ssize_t r = read_some(fd, b->p, b->cap);
            if (r < 0)
                return -1;
            b->start = 0;
            b->end = (size_t)r;
        }
        size_t k = b->end - b->start;
        if (k > n)
            k = n;
        memcpy(out, b->p + b->start, k);
        b->start += k;
        out += k;
        n -= k;
    }
    return 0;
}

static inline int write_all_iov(int fd, struct iovec *iov, int cnt)
{
    while (cnt > 0) {
        ssize_t w = writev(fd, iov, cnt);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (cnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* Sends header+body as one frame: length, then both parts. */
static inline int send_frame(int fd, struct buf *head, const void *body, size_t body_len)
{
    uint32_t total = (uint32_t)(head->len + body_len);
    struct iovec iov[3] = {
        {&total, 4}, {head->p, head->len}, {(void *)body, body_len},
    };
    return write_all_iov(fd, iov, body_len ? 3 : 2);
}

struct reader {
    const char *p, *end;
    int bad;
};

static inline uint8_t get_u8(struct reader *r)
{
    if (r->end - r->p < 1) { r->bad = 1; return 0; }
    return (uint8_t)*r->p++;
}

static inline uint16_t get_u16(struct reader *r)
{
    uint16_t v = 0;
    if (r->end - r->p < 2) { r->bad = 1; return 0; }
    memcpy(&v, r->p, 2);
    r->p += 2;
    return v;
}

static inline uint32_t get_u32(struct reader *r)
{
    uint32_t v = 0;
    if (r->end - r->p < 4) { r->bad = 1; return 0; }
    memcpy(&v, r->p, 4);
    r->p += 4;
    return v;
}

static inline uint64_t get_u64(struct reader *r)
{
    uint64_t v = 0;
    if (r->end - r->p < 8) { r->bad = 1; return 0; }
    memcpy(&v, r->p, 8);
    r->p += 8;
    return v;
}

/* Returns a pointer into the frame; the wire guarantees the NUL. */
static inline char *get_str(struct reader *r, size_t *len)
{
    uint32_t n = get_u32(r);
    if (r->bad || (size_t)(r->end - r->p) < (size_t)n + 1 || r->p[n] != '\0') {
        r->bad = 1;
        if (len)
            *len = 0;
        return (char *)"";
    }
    char *s = (char *)r->p;
    r->p += n + 1;
    if (len)
        *len = n;
    return s;
}

/* kv pairs borrowed from the frame: keys are strdup'd by insert, values
 * point into the frame and are never freed. */
static inline int get_kv(struct reader *r, http_kv_store_t *s)
{
    uint32_t n = get_u32(r);
    for (uint32_t i = 0; i < n && !r->bad; i++) {
        char *k = get_str(r, NULL);
        char *v = get_str(r, NULL);
        if (!r->bad && http_kv_insert(s, k, v) != 0)
            return -1;
    }
    return r->bad ? -1 : 0;
}


#endif /* CWEB_FRAME_H */
