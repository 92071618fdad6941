/*
 * cweb_wire.h - internal to the glue: the frames exchanged between the api
 * and a worker, and the records between a worker and the services broker.
 * The Python side is runtime/protocol.py (frames, outcomes, methods) and
 * runtime/services.py (broker records); tests/unit/test_wire_agreement.py
 * compiles this header and fails when the two disagree. Change both together
 * and bump CWEB_ABI_VERSION.
 *
 * Every frame is a little-endian u32 length followed by that many bytes; the
 * first byte is the frame type. Strings are u32 length + bytes + a NUL that
 * the length does not count, so C can point into the frame directly.
 */
#ifndef CWEB_WIRE_H
#define CWEB_WIRE_H

#include "cweb.h"
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

/* The outcome byte of CWEB_F_JOB_END. */
enum cweb_job_outcome {
    CWEB_OUTCOME_RESULT = 0,    /* set_result: data is the result JSON */
    CWEB_OUTCOME_ERROR = 1,     /* set_error: data is the error text */
    CWEB_OUTCOME_NONE = 2,      /* neither: the return code decides */
};

/* The method byte of CWEB_F_HTTP is an http_method_t (cweb.h), HTTP_GET..HTTP_HEAD. */
#define CWEB_METHOD_COUNT (HTTP_HEAD + 1)

/* Services broker records (cweb_broker.c <-> runtime/services.py): a header
 * of u32 seq, u8 op, u8 flags, u16 klen, i32 arg, u32 total, then up to
 * CWEB_BROKER_RECORD_PAYLOAD bytes. */
#define CWEB_BROKER_HEADER_BYTES 16u
#define CWEB_BROKER_RECORD_PAYLOAD (32u << 10)
enum cweb_broker_op {
    CWEB_BROKER_GET = 1,
    CWEB_BROKER_SET = 2,
    CWEB_BROKER_DEL = 3,
    CWEB_BROKER_SIGN = 4,
    CWEB_BROKER_VERIFY = 5,
    CWEB_BROKER_HELLO = 6,
    CWEB_BROKER_REPLY = 0x80,   /* or-ed into the op of an answer */
};
#define CWEB_BROKER_FIRST 1     /* flags: first record of a message */
#define CWEB_BROKER_LAST 2      /* flags: last record of a message */
#define CWEB_BROKER_KEY_MAX 250u
#define CWEB_BROKER_TOKEN_MAX (64u << 10)
#define CWEB_BROKER_SIGNATURE_MAX (8u << 10)

#endif /* CWEB_WIRE_H */
