"""Frames between the api and the workers, parsed as the api's connections
do: split across reads, several per read, large ones as views."""

from __future__ import annotations

import struct

from api.runtime_client import _VIEW_FROM, EventsConn, _frames
from runtime import protocol


def _str(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b + b"\0"


def http_answer(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """An F_HTTP_RESP frame as the C glue writes it (without the length prefix)."""
    kv = b"".join(_str(k) + _str(v) for k, v in headers)
    return struct.pack("<BBHI", protocol.F_HTTP_RESP, 0, status, len(headers)) + kv + _str(body)


def prefixed(frame: bytes) -> bytes:
    return struct.pack("<I", len(frame)) + frame


def test_split_gives_status_header_block_and_body() -> None:
    frame = http_answer(201, [(b"Content-Type", b"text/plain"), (b"X-A", b"1")], b"made")
    status, block, body = protocol.split_http_response(frame)
    assert (201, b"made") == (status, body)
    assert [(b"Content-Type", b"text/plain"), (b"X-A", b"1")] == protocol.decode_kv(block)


def test_split_of_a_view_gives_a_view_of_the_body_and_a_hashable_block() -> None:
    body = bytes(range(256)) * 512
    frame = memoryview(bytearray(http_answer(200, [(b"k", b"v")], body)))
    status, block, view = protocol.split_http_response(frame)
    assert type(block) is bytes and hash(block)
    assert type(view) is memoryview and bytes(view) == body


def test_frames_split_across_reads_and_several_in_one_read() -> None:
    conn = EventsConn(lambda frame: None)
    small = [bytes([protocol.F_WS_SEND]) + bytes([i]) * (i + 1) for i in range(5)]
    stream = b"".join(prefixed(f) for f in small)
    got: list[bytes] = []
    # Feed it in awkward pieces: 3 bytes, then the rest but 2, then 2.
    for piece in (stream[:3], stream[3:-2], stream[-2:]):
        data = conn.buf + piece if conn.buf else piece
        got += [bytes(f) for f in _frames(bytes(data), conn)]
    assert small == got
    assert not conn.buf


def test_large_frames_are_views_that_survive_the_next_read() -> None:
    conn = EventsConn(lambda frame: None)
    big = bytes([protocol.F_HTTP_RESP]) + b"x" * _VIEW_FROM
    tail = prefixed(b"\x01abc")
    data = bytearray(prefixed(big) + tail[:3])
    frames = _frames(data, conn)
    assert 1 == len(frames) and type(frames[0]) is memoryview
    # The tail went to a new buffer: refilling it leaves the view intact.
    conn.buf += tail[3:]
    assert bytes(frames[0]) == big
    assert [b"\x01abc"] == [bytes(f) for f in _frames(conn.buf, conn)]
