"""The services broker (runtime/services.py) over a real channel, driven with
the wire format directly: what a hostile worker could send."""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path

import pytest

from runtime import services
from runtime.services import FIRST, HEADER, LAST, OP_DEL, OP_GET, OP_HELLO, OP_SET, OP_SIGN, OP_VERIFY, REPLY

CAPACITY = 256 << 10


@pytest.fixture
def broker(tmp_path: Path) -> services.Broker:
    return services.Broker(str(tmp_path), services.ServicesSettings(cache_bytes=CAPACITY))


@pytest.fixture
def chan(broker: services.Broker) -> socket.socket:
    ours, theirs = services.Broker.channel()
    broker.attach(ours, "test")
    theirs.settimeout(2)
    return theirs


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seq = 0

    def request(self, op: int, key: bytes = b"", value: bytes = b"", arg: int = 0) -> tuple[int, bytes]:
        self.seq += 1
        payload = key + value
        chunks = [payload[i : i + services.RECORD_PAYLOAD] for i in range(0, len(payload), services.RECORD_PAYLOAD)] or [b""]
        for i, chunk in enumerate(chunks):
            flags = (FIRST if i == 0 else 0) | (LAST if i == len(chunks) - 1 else 0)
            self.sock.send(HEADER.pack(self.seq, op, flags, len(key), arg, len(payload)) + chunk)
        return self.reply(self.seq, op)

    def reply(self, seq: int, op: int) -> tuple[int, bytes]:
        body = b""
        while True:
            rec = self.sock.recv(HEADER.size + services.RECORD_PAYLOAD)
            rseq, rop, flags, _, status, _total = HEADER.unpack_from(rec)
            if rseq != seq:
                continue
            assert rop == op | REPLY
            body += rec[HEADER.size :]
            if flags & LAST:
                return status, body


def test_set_get_delete_and_truncated_get(chan: socket.socket) -> None:
    c = Client(chan)
    assert (0, b"") == c.request(OP_SET, b"k", b"hello world")
    assert (11, b"hello") == c.request(OP_GET, b"k", arg=5)
    assert (11, b"hello world") == c.request(OP_GET, b"k", arg=100)
    assert 0 == c.request(OP_DEL, b"k")[0]
    assert -errno.ENOENT == c.request(OP_GET, b"k", arg=10)[0]
    assert -errno.ENOENT == c.request(OP_DEL, b"k")[0]


def test_large_value_crosses_in_records(tmp_path: Path) -> None:
    broker = services.Broker(str(tmp_path), services.ServicesSettings(cache_bytes=4 << 20))
    ours, theirs = services.Broker.channel()
    broker.attach(ours, "big")
    theirs.settimeout(2)
    c = Client(theirs)
    big = bytes(range(256)) * 1024  # 256 KiB: eight records each way
    assert 0 == c.request(OP_SET, b"big", big)[0]
    assert (len(big), big) == c.request(OP_GET, b"big", arg=len(big))


def test_ttl_and_lru_eviction(chan: socket.socket) -> None:
    c = Client(chan)
    assert 0 == c.request(OP_SET, b"short", b"x", arg=1)[0]
    assert 1 == c.request(OP_GET, b"short", arg=0)[0]
    time.sleep(1.1)
    assert -errno.ENOENT == c.request(OP_GET, b"short", arg=0)[0]
    value = b"v" * 8000
    for i in range(36):  # 36 x ~8 KiB > 256 KiB: the oldest go
        assert 0 == c.request(OP_SET, f"e{i}".encode(), value)[0]
        if i == 5:
            assert 8000 == c.request(OP_GET, b"e0", arg=0)[0]  # e0 becomes recent
    assert 8000 == c.request(OP_GET, b"e0", arg=0)[0]
    assert -errno.ENOENT == c.request(OP_GET, b"e1", arg=0)[0]
    assert 8000 == c.request(OP_GET, b"e35", arg=0)[0]


def test_oversized_and_malformed_requests_are_refused_not_buffered(chan: socket.socket, broker: services.Broker) -> None:
    c = Client(chan)
    c.seq += 1
    chan.send(HEADER.pack(c.seq, OP_SET, FIRST, 3, 0, 3 + broker.cache.max_value + 1) + b"big")
    assert (-errno.EMSGSIZE, b"") == c.reply(c.seq, OP_SET)
    assert -errno.EMSGSIZE == c.request(OP_GET, b"k" * 251, arg=0)[0]
    assert -errno.EINVAL == c.request(99)[0]
    # Garbage shorter than a header and a continuation of nothing are ignored.
    chan.send(b"\x01\x02")
    chan.send(HEADER.pack(12345, OP_SET, LAST, 0, 0, 10) + b"0123456789")
    # A request abandoned half way is dropped by the next first record.
    chan.send(HEADER.pack(777, OP_SET, FIRST, 1, 0, 100) + b"kpartial")
    assert 0 == c.request(OP_SET, b"k", b"whole")[0]
    assert (5, b"whole") == c.request(OP_GET, b"k", arg=10)


def test_flood_from_one_channel_does_not_starve_another(broker: services.Broker) -> None:
    flood_ours, flood = services.Broker.channel()
    quiet_ours, quiet = services.Broker.channel()
    broker.attach(flood_ours, "flood")
    broker.attach(quiet_ours, "quiet")
    quiet.settimeout(2)
    flood.setblocking(False)
    rec = HEADER.pack(1, OP_GET, FIRST | LAST, 1, 1 << 20, 1) + b"x"
    sent = 0
    try:
        while True:  # fill the channel until the kernel refuses: nobody reads the answers
            flood.send(rec)
            sent += 1
    except BlockingIOError:
        pass
    assert sent > 10
    c = Client(quiet)
    worst = 0.0
    for i in range(50):
        t0 = time.monotonic()
        assert 0 == c.request(OP_SET, f"q{i}".encode(), b"v")[0]
        worst = max(worst, time.monotonic() - t0)
    assert worst < 0.5


def test_sign_and_verify_with_the_generated_key_pair(chan: socket.socket, tmp_path: Path) -> None:
    c = Client(chan)
    status, hello = c.request(OP_HELLO)
    assert 0 == status and b'"crypto": true' in hello and b"PRIVATE" not in hello
    n, sig = c.request(OP_SIGN, value=b"user=1")
    assert n == len(sig) and sig.endswith(b"\n")
    assert 0 == c.request(OP_VERIFY, sig, b"user=1")[0]
    assert -errno.EBADMSG == c.request(OP_VERIFY, sig, b"user=2")[0]
    assert -errno.EBADMSG == c.request(OP_VERIFY, b"%%%", b"user=1")[0]
    assert 0o600 == (tmp_path / "signing" / "server.key").stat().st_mode & 0o777


def test_module_names_that_cannot_name_a_directory() -> None:
    assert services.valid_module_name("kv_store-1.2")
    for bad in ("", ".", "..", "a/b", "a\0b", "é", "x" * 129):
        assert not services.valid_module_name(bad), bad
