/*
 * cweb_wire.h - internal to the glue: the frames exchanged between the api
 * and a worker. Mirrored in runtime/protocol.py; change both together and
 * bump CWEB_ABI_VERSION.
 *
 * Every frame is a little-endian u32 length followed by that many bytes; the
 * first byte is the frame type. Strings are u32 length + bytes + a NUL that
 * the length does not count, so C can point into the frame directly.
 */
#ifndef CWEB_WIRE_H
#define CWEB_WIRE_H

#include <stdint.h>
#include <stddef.h>

enum cweb_frame_type {
    /* api -> worker, on a data connection */
    CWEB_F_HTTP = 1,        /* u8 method, u16 route, str path, str query, str body, kv headers, kv data */
    CWEB_F_WS_OPEN = 2,     /* u8 0, u16 ws index, u64 conn id, str path */
    CWEB_F_WS_MSG = 3,      /* u8 binary, u16 ws index, u64 conn id, str data */
    CWEB_F_WS_CLOSE = 4,    /* u8 0, u16 ws index, u64 conn id */
    CWEB_F_JOB_RUN = 5,     /* u8 0, u16 job index, u32 attempt, str uuid, str payload */
    CWEB_F_EVENTS = 6,      /* makes this connection the worker's outbound channel */
    CWEB_F_JOB_CANCEL = 7,  /* (events channel) u8 0, u16 job index, str uuid */
    CWEB_F_REPLY = 8,       /* (events channel) u32 seq, i32 rc, str value */

    /* worker -> api, answers on the same data connection */
    CWEB_F_HTTP_RESP = 64,  /* u8 0, u16 status, kv headers, str body */
    CWEB_F_ACK = 65,        /* the event was handled */
    CWEB_F_JOB_EVENT = 66,  /* (job connection) str type, str data json */
    CWEB_F_JOB_END = 67,    /* (job connection) u8 outcome(0 result,1 error,2 none), i32 rc, str data */

    /* worker -> api, on the events channel */
    CWEB_F_WS_SEND = 96,    /* u8 binary, u16 0, u64 conn id, str data */
    CWEB_F_WS_CLOSE_REQ = 97, /* u8 0, u16 0, u64 conn id */
    CWEB_F_JOBS_CREATE = 98,  /* u32 seq, str name, str payload */
};

#endif /* CWEB_WIRE_H */
