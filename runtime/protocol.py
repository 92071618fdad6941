"""Frames between the api and a worker: the Python definition of
builder/sdk/cweb_wire.h (tests/unit/test_wire_agreement.py compiles that
header and fails when they disagree).

Every frame is a little-endian u32 length and that many bytes, the first of
which is the frame type. Strings are a u32 length, the bytes and a NUL the
length does not count (so the C side can point into the frame).
"""

from __future__ import annotations

import enum
import struct

F_HTTP = 1
F_WS_OPEN = 2
F_WS_MSG = 3
F_WS_CLOSE = 4
F_JOB_RUN = 5
F_EVENTS = 6
F_JOB_CANCEL = 7
F_REPLY = 8
F_HTTP_RESP = 64
F_ACK = 65
F_JOB_EVENT = 66
F_JOB_END = 67
F_WS_SEND = 96
F_WS_CLOSE_REQ = 97
F_JOBS_CREATE = 98

# The HTTP methods a route may declare, in http_method_t order (cweb.h): a
# method's index is the method byte of an F_HTTP frame.
METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD")
METHOD_CODES = {name: code for code, name in enumerate(METHODS)}


class JobOutcome(enum.IntEnum):
    """The outcome byte of F_JOB_END (enum cweb_job_outcome)."""

    RESULT = 0  # set_result: data is the result JSON
    ERROR = 1   # set_error: data is the error text
    NONE = 2    # neither: the return code decides

_U32 = struct.Struct("<I")
_HTTP_HEAD = struct.Struct("<IBBH")  # frame length, type, method, route index
_RESP_HEAD = struct.Struct("<BBHI")  # type, pad, status, header count


def _str(b: bytes) -> bytes:
    return _U32.pack(len(b)) + b + b"\0"


def _kv(pairs: list[tuple[bytes, bytes]]) -> bytes:
    parts = [_U32.pack(len(pairs))]
    for k, v in pairs:
        parts.append(_str(k))
        parts.append(_str(v))
    return b"".join(parts)


_EMPTY_KV = _U32.pack(0)


# A request body at least this large is not copied into its frame: the frame
# is a list of parts (head, the body's chunks, tail) that go out in one
# writelines(), which hands the kernel each part where it lies.
JOIN_BELOW = 64 << 10


def encode_http(
    method: int,
    route: int,
    path: bytes,
    query: bytes,
    body: bytes | list[bytes],
    headers: list[tuple[bytes, bytes]],
    data: list[tuple[bytes, bytes]] | None = None,
) -> bytes | list[bytes]:
    """One HTTP request frame, length prefix included: bytes, or for a body
    of JOIN_BELOW bytes or more the list of its parts (write them in order).

    body may be the chunks it arrived in: below JOIN_BELOW they are copied
    once, into the frame; from it, not at all."""
    chunks = [body] if isinstance(body, (bytes, bytearray, memoryview)) else body
    size = sum(map(len, chunks))
    kv = _kv(headers)
    extra = _kv(data) if data else _EMPTY_KV
    prefix = _HTTP_HEAD.pack(19 + len(path) + len(query) + size + len(kv) + len(extra), F_HTTP, method, route)
    if size >= JOIN_BELOW:
        return [b"".join((prefix, _str(path), _str(query), _U32.pack(size))), *chunks, b"".join((b"\0", kv, extra))]
    return b"".join((prefix, _str(path), _str(query), _U32.pack(size), *chunks, b"\0", kv, extra))


def split_http_response(frame: bytes | memoryview) -> tuple[int, bytes, bytes | memoryview]:
    """Status, the raw header block (count and pairs, for decode_kv) and body of
    an F_HTTP_RESP frame: a module answers with the same headers again and
    again, so the block is a cache key for their parsed form."""
    _type, _pad, status, count = _RESP_HEAD.unpack_from(frame, 0)
    off = _RESP_HEAD.size
    for _ in range(2 * count):
        (n,) = _U32.unpack_from(frame, off)
        off += 5 + n
    (n,) = _U32.unpack_from(frame, off)
    block = frame[4:off]
    # A memoryview frame (a large answer) gives a view of its body: no copy.
    return status, block if type(block) is bytes else bytes(block), frame[off + 4 : off + 4 + n]


def decode_kv(block: bytes) -> list[tuple[bytes, bytes]]:
    """The pairs of a kv block (u32 count, then strings)."""
    (count,) = _U32.unpack_from(block, 0)
    off = 4
    pairs = []
    for _ in range(count):
        k, off = _read_str(block, off)
        v, off = _read_str(block, off)
        pairs.append((k, v))
    return pairs


_WS_HEAD = struct.Struct("<IBBHQ")  # frame length, type, flag, index, connection id


def encode_ws(kind: int, index: int, conn_id: int, data: bytes = b"", binary: bool = False) -> bytes:
    """A WS_OPEN (data = path), WS_MSG or WS_CLOSE frame."""
    tail = b"" if kind == F_WS_CLOSE else _str(data)
    return _WS_HEAD.pack(12 + len(tail), kind, 1 if binary else 0, index, conn_id) + tail


def decode_ws_out(frame: bytes) -> tuple[int, bool, int, bytes]:
    """(type, binary, connection id, data) of WS_SEND / WS_CLOSE_REQ."""
    kind, binary, _, conn_id = struct.unpack_from("<BBHQ", frame, 0)
    data = b""
    if kind == F_WS_SEND:
        (n,) = _U32.unpack_from(frame, 12)
        data = frame[16 : 16 + n]
    return kind, bool(binary), conn_id, data


def encode_job_run(index: int, attempt: int, job_uuid: str, payload: bytes) -> bytes:
    tail = _str(job_uuid.encode()) + _str(payload)
    return struct.pack("<IBBHI", 8 + len(tail), F_JOB_RUN, 0, index, attempt) + tail


def encode_job_cancel(job_uuid: str) -> bytes:
    tail = _str(job_uuid.encode())
    return struct.pack("<IBBH", 4 + len(tail), F_JOB_CANCEL, 0, 0) + tail


def encode_reply(seq: int, rc: int, value: bytes) -> bytes:
    tail = _str(value)
    return struct.pack("<IBIi", 9 + len(tail), F_REPLY, seq, rc) + tail


def _read_str(frame: bytes, off: int) -> tuple[bytes, int]:
    (n,) = _U32.unpack_from(frame, off)
    return frame[off + 4 : off + 4 + n], off + 5 + n


def decode_job_event(frame: bytes) -> tuple[str, bytes]:
    """(type, data json) of a JOB_EVENT frame."""
    kind, off = _read_str(frame, 1)
    data, _ = _read_str(frame, off)
    return kind.decode("utf-8", "replace"), data


def decode_job_end(frame: bytes) -> tuple[int, int, bytes]:
    """(outcome, return code, data) of JOB_END."""
    outcome, rc = struct.unpack_from("<Bi", frame, 1)
    data, _ = _read_str(frame, 6)
    return outcome, rc, data


def decode_jobs_create(frame: bytes) -> tuple[int, str, bytes]:
    (seq,) = _U32.unpack_from(frame, 1)
    name, off = _read_str(frame, 5)
    payload, _ = _read_str(frame, off)
    return seq, name.decode("utf-8", "replace"), payload
