"""The services broker: the cross-module cache and token signing, served to
workers over the socket each one inherits at spawn.

Why a broker: a module is native code. Whatever a worker can map it can
corrupt, and whatever lock it can take it can hold, so nothing shared
between modules is mapped into workers or locked by them. The cache's table
and the signing key live here, in the agent; a worker only sends requests.

Channel: one AF_UNIX SOCK_SEQPACKET socketpair per worker (records are
atomic, so a call that times out half way never leaves the stream out of
step). Every record is a 16-byte header and up to RECORD_PAYLOAD bytes:

    u32 seq | u8 op | u8 flags | u16 klen | i32 arg | u32 total   (little-endian)

A message (a request or its reply) is one or more records with the same
seq; the first has FIRST set, the last LAST. Its payload, `total` bytes in
all, is the key (`klen` bytes) followed by the value. `arg` is the TTL of a
set, the caller's buffer size of a get, and the status of a reply (>= 0
success, < 0 a negated errno). Replies carry op | 0x80 and the request's seq,
so a caller that gave up on a call skips its late answer.

    GET    key                 -> status = full value length, payload = up to arg bytes
    SET    key, value, arg=ttl -> 0
    DEL    key                 -> 0 | -ENOENT
    SIGN   value=token         -> payload = base64 signature (64-column lines)
    VERIFY key=signature, value=token -> 0 | -EBADMSG
    HELLO                      -> payload = JSON {max_value, crypto, certificate}

Fairness: one thread serves every worker from one selector. A worker is
given at most TURN_RECORDS records or TURN_SECONDS of work per round, and
its unsent replies are capped at OUT_MAX_BYTES (beyond that it is not read
until it reads), so a worker that floods or stops reading delays the others
by at most one turn, not by its backlog.
"""

from __future__ import annotations

import base64
import collections
import datetime
import errno
import json
import logging
import os
import selectors
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from runtime.files import write_atomic

log = logging.getLogger("cweb.services")

# The record layout and codes are also in builder/sdk/cweb_wire.h (the
# worker's side); tests/unit/test_wire_agreement.py checks both agree.
HEADER = struct.Struct("<IBBHiI")
RECORD_PAYLOAD = 32 << 10
OP_GET, OP_SET, OP_DEL, OP_SIGN, OP_VERIFY, OP_HELLO = 1, 2, 3, 4, 5, 6
REPLY = 0x80
FIRST, LAST = 1, 2

KEY_MAX = 250
# Tokens and signatures are small; a bound keeps one sign call cheap.
TOKEN_MAX = 64 << 10
SIGNATURE_MAX = 8 << 10
# Bookkeeping an entry costs beyond its key and value (counted against the size).
ENTRY_OVERHEAD = 64
# A value may take at most this fraction of the cache, and never more than VALUE_CAP.
VALUE_FRACTION = 16
VALUE_CAP = 16 << 20

SWITCH_INTERVAL_S = 0.0002
TURN_RECORDS = 64
TURN_SECONDS = 0.005
OUT_MAX_BYTES = 4 << 20

DEFAULT_CACHE_BYTES = 64 << 20
MIN_CACHE_BYTES = 256 << 10
MAX_CACHE_BYTES = 64 << 30
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

SIGNING_DIR = "signing"


def valid_module_name(name: str) -> bool:
    """A module name that is safe as one path component."""
    return 0 < len(name) <= 128 and name not in (".", "..") and all(ch.isalnum() or ch in "_-." for ch in name) and name.isascii()


def parse_size(text: str) -> int:
    """'67108864', '64M', '512k' -> bytes. Raises ValueError when malformed."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    number = raw[: len(raw) - len(unit)] if unit else raw
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r} (use bytes, or a K/M/G suffix)")
    return int(number) * _UNITS[unit]


@dataclass(frozen=True)
class ServicesSettings:
    cache_bytes: int = DEFAULT_CACHE_BYTES
    tls_cert: str = ""
    tls_key: str = ""

    @classmethod
    def from_env(cls, env: dict | None = None) -> ServicesSettings:
        env = dict(os.environ) if env is None else env
        raw = env.get("CWEB_CACHE_BYTES", "")
        size = parse_size(raw) if raw.strip() else DEFAULT_CACHE_BYTES
        if size < MIN_CACHE_BYTES or size > MAX_CACHE_BYTES:
            log.warning("CWEB_CACHE_BYTES=%s is outside [%d, %d]; clamped", raw, MIN_CACHE_BYTES, MAX_CACHE_BYTES)
        return cls(
            cache_bytes=min(max(size, MIN_CACHE_BYTES), MAX_CACHE_BYTES),
            tls_cert=env.get("CWEB_TLS_CERT", ""),
            tls_key=env.get("CWEB_TLS_KEY", ""),
        )


class Cache:
    """Bytes by key, LRU within a byte budget, optional TTL. Only the broker
    thread touches it, so it needs no lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.max_value = min(capacity // VALUE_FRACTION, VALUE_CAP)
        self.entries: collections.OrderedDict[bytes, tuple[bytes, float]] = collections.OrderedDict()
        self.used = 0
        self.hits = self.misses = self.sets = self.evictions = self.expirations = 0

    @staticmethod
    def cost(key: bytes, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD

    def _drop(self, key: bytes) -> None:
        value, _ = self.entries.pop(key)
        self.used -= self.cost(key, value)

    def _live(self, key: bytes) -> bytes | None:
        item = self.entries.get(key)
        if item is None:
            return None
        value, expires = item
        if expires and expires <= time.monotonic():
            self._drop(key)
            self.expirations += 1
            return None
        return value

    def get(self, key: bytes) -> bytes | None:
        value = self._live(key)
        if value is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return value

    def set(self, key: bytes, value: bytes, ttl: int) -> int:
        if len(value) > self.max_value:
            return -errno.E2BIG
        if key in self.entries:
            self._drop(key)
        need = self.cost(key, value)
        while self.used + need > self.capacity and self.entries:
            old = next(iter(self.entries))
            self._drop(old)
            self.evictions += 1
        self.entries[key] = (value, time.monotonic() + ttl if ttl > 0 else 0.0)
        self.used += need
        self.sets += 1
        return 0

    def delete(self, key: bytes) -> int:
        if self._live(key) is None:
            return -errno.ENOENT
        self._drop(key)
        return 0


class Signer:
    """The server's key pair: the TLS certificate and key when the server has
    them, otherwise a P-256 key and a self-signed certificate generated once
    in <data_dir>/signing/. Signatures are SHA-256 over the token bytes
    (PKCS#1 v1.5 for RSA keys, DER ECDSA for EC keys) - what OpenSSL's
    EVP_Sign* produce - in base64 with 64-column lines."""

    def __init__(self, data_dir: str, tls_cert: str = "", tls_key: str = "") -> None:
        self.key = None
        self.cert_pem = b""
        self.certificate = ""
        try:
            if tls_cert and tls_key:
                self._load(tls_cert, tls_key)
            else:
                self._generated(os.path.join(data_dir, SIGNING_DIR))
        except (OSError, ValueError, TypeError) as exc:
            log.error("token signing is off: %s", exc)
            self.key = None

    def _load(self, cert_path: str, key_path: str) -> None:
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        cert = x509.load_pem_x509_certificate(cert_pem)
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if cert.public_key().public_bytes(der, pub) != key.public_key().public_bytes(der, pub):
            raise ValueError(f"{key_path} is not the key of {cert_path}")
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise ValueError(f"{key_path}: only RSA and EC keys can sign tokens")
        self.key, self.cert_pem, self.certificate = key, cert.public_bytes(serialization.Encoding.PEM), cert_path

    def _generated(self, folder: str) -> None:
        key_path, cert_path = os.path.join(folder, "server.key"), os.path.join(folder, "server.crt")
        if not os.path.exists(cert_path):
            os.makedirs(folder, mode=0o700, exist_ok=True)
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cweb token signing")])
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=3650 * 3))
                .sign(key, hashes.SHA256())
            )
            key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            # The key first, the certificate last: a certificate on disk means the pair is complete.
            write_atomic(key_path, key_pem, 0o600)
            write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._load(cert_path, key_path)

    @property
    def ready(self) -> bool:
        return self.key is not None

    def sign(self, token: bytes) -> bytes | None:
        if self.key is None:
            return None
        if isinstance(self.key, rsa.RSAPrivateKey):
            sig = self.key.sign(token, padding.PKCS1v15(), hashes.SHA256())
        else:
            sig = self.key.sign(token, ec.ECDSA(hashes.SHA256()))
        b64 = base64.b64encode(sig)
        return b"".join(b64[i : i + 64] + b"\n" for i in range(0, len(b64), 64))

    def verify(self, signature_b64: bytes, token: bytes) -> bool:
        if self.key is None:
            return False
        try:
            sig = base64.b64decode(signature_b64.replace(b"\n", b"").replace(b"\r", b""), validate=True)
            pub = self.key.public_key()
            if isinstance(pub, rsa.RSAPublicKey):
                pub.verify(sig, token, padding.PKCS1v15(), hashes.SHA256())
            else:
                pub.verify(sig, token, ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature):
            return False
        return True




class _Conn:
    __slots__ = ("sock", "label", "seq", "op", "klen", "arg", "total", "buf", "out", "out_bytes", "reading", "ready", "events")

    def __init__(self, sock: socket.socket, label: str) -> None:
        self.sock = sock
        self.label = label
        self.seq = -1           # the message being received, -1 when none
        self.op = self.klen = self.arg = self.total = 0
        self.buf = bytearray()
        self.out: collections.deque[bytes] = collections.deque()
        self.out_bytes = 0
        self.reading = True
        self.ready = False      # records may be waiting in the socket
        self.events = selectors.EVENT_READ


class Broker:
    """Serves the cache and signing to every attached worker from one thread."""

    def __init__(self, data_dir: str, settings: ServicesSettings | None = None) -> None:
        self.settings = settings or ServicesSettings.from_env()
        self.cache = Cache(self.settings.cache_bytes)
        self.signer = Signer(data_dir, self.settings.tls_cert, self.settings.tls_key)
        self.hello = json.dumps(
            {"max_value": self.cache.max_value, "crypto": self.signer.ready, "certificate": self.signer.cert_pem.decode()}
        ).encode()
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}
        self.pending: collections.deque[tuple[str, object]] = collections.deque()
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        # The agent's event loop shares the GIL with this thread; Python's
        # default 5 ms switch interval would add up to that much to a call.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self.thread = threading.Thread(target=self._run, name="cweb-services", daemon=True)
        self.thread.start()
        log.debug("services: cache %d bytes, token signing %s", self.cache.capacity, f"with {self.signer.certificate}" if self.signer.ready else "off")

    @staticmethod
    def channel() -> tuple[socket.socket, socket.socket]:
        """(broker end, worker end) of a new channel; the worker end is inheritable."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        return ours, theirs

    def attach(self, sock: socket.socket, label: str) -> None:
        self._post("attach", (sock, label))

    def _post(self, kind: str, item: object) -> None:
        with self.lock:
            self.pending.append((kind, item))
        try:
            self.wake_w.send(b"x")
        except BlockingIOError:
            pass

    # ---- the thread -------------------------------------------------------

    def _run(self) -> None:
        while True:
            busy = any(c.ready and c.reading for c in self.conns.values())
            for key, events in self.sel.select(0 if busy else None):
                if key.data is None:
                    self._drain_wake()
                    continue
                c: _Conn = key.data
                if events & selectors.EVENT_READ:
                    c.ready = True
                if events & selectors.EVENT_WRITE:
                    try:
                        self._flush(c)
                    except Exception:  # noqa: BLE001
                        log.exception("services: dropping the channel of %s", c.label)
                        self._close(c)
            for c in list(self.conns.values()):
                if c.ready and c.reading:
                    try:
                        self._turn(c)
                    except Exception:  # noqa: BLE001 - one worker's fault must not stop the broker
                        log.exception("services: dropping the channel of %s", c.label)
                        self._close(c)

    def _drain_wake(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self.lock:
            items = list(self.pending)
            self.pending.clear()
        for _kind, item in items:
            sock, label = item  # type: ignore[misc]
            sock.setblocking(False)
            c = _Conn(sock, label)
            self.conns[sock.fileno()] = c
            self.sel.register(sock, selectors.EVENT_READ, c)

    def _close(self, c: _Conn | None) -> None:
        if c is None:
            return
        c.ready = False
        if c.sock.fileno() < 0:
            return
        self.conns.pop(c.sock.fileno(), None)
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _turn(self, c: _Conn) -> None:
        """Serve up to one turn's worth of c's records."""
        deadline = time.monotonic() + TURN_SECONDS
        for _ in range(TURN_RECORDS):
            try:
                rec = c.sock.recv(HEADER.size + RECORD_PAYLOAD)
            except BlockingIOError:
                c.ready = False
                return
            except OSError:
                rec = b""
            if not rec:
                self._close(c)
                c.ready = False
                return
            self._record(c, rec)
            if not c.reading or time.monotonic() >= deadline:
                return

    def _record(self, c: _Conn, rec: bytes) -> None:
        if len(rec) < HEADER.size:
            return
        seq, op, flags, klen, arg, total = HEADER.unpack_from(rec)
        payload = memoryview(rec)[HEADER.size :]
        if flags & FIRST:
            # A new request; an unfinished one (its caller timed out) is dropped.
            c.seq, c.buf = -1, bytearray()
            if not self._acceptable(op, klen, total):
                self._reply(c, seq, op, -errno.EMSGSIZE if op in (OP_GET, OP_SET, OP_DEL, OP_SIGN, OP_VERIFY) else -errno.EINVAL)
                return
            c.seq, c.op, c.klen, c.arg, c.total = seq, op, klen, arg, total
        elif seq != c.seq:
            return
        if len(c.buf) + len(payload) > c.total:
            c.seq, c.buf = -1, bytearray()
            self._reply(c, seq, op, -errno.EPROTO)
            return
        c.buf += payload
        if flags & LAST:
            if len(c.buf) == c.total:
                self._serve(c)
            else:
                self._reply(c, seq, c.op, -errno.EPROTO)
            c.seq, c.buf = -1, bytearray()

    def _acceptable(self, op: int, klen: int, total: int) -> bool:
        if klen > total:
            return False
        if op in (OP_GET, OP_DEL):
            return 0 < klen <= KEY_MAX and total == klen
        if op == OP_SET:
            return 0 < klen <= KEY_MAX and total - klen <= self.cache.max_value
        if op == OP_SIGN:
            return klen == 0 and total <= TOKEN_MAX
        if op == OP_VERIFY:
            return klen <= SIGNATURE_MAX and total - klen <= TOKEN_MAX
        return op == OP_HELLO and total == 0

    def _serve(self, c: _Conn) -> None:
        data = bytes(c.buf)
        key, value = data[: c.klen], data[c.klen :]
        op, seq, arg = c.op, c.seq, c.arg
        if op == OP_GET:
            found = self.cache.get(key)
            if found is None:
                self._reply(c, seq, op, -errno.ENOENT)
            else:
                self._reply(c, seq, op, len(found), found[: max(arg, 0)])
        elif op == OP_SET:
            self._reply(c, seq, op, -errno.EINVAL if arg < 0 else self.cache.set(key, value, arg))
        elif op == OP_DEL:
            self._reply(c, seq, op, self.cache.delete(key))
        elif op == OP_SIGN:
            sig = self.signer.sign(value)
            self._reply(c, seq, op, -errno.ENOSYS if sig is None else len(sig), sig or b"")
        elif op == OP_VERIFY:
            if not self.signer.ready:
                self._reply(c, seq, op, -errno.ENOSYS)
            else:
                self._reply(c, seq, op, 0 if self.signer.verify(key, value) else -errno.EBADMSG)
        else:
            self._reply(c, seq, op, 0, self.hello)

    def _reply(self, c: _Conn, seq: int, op: int, status: int, payload: bytes = b"") -> None:
        view = memoryview(payload)
        off, total = 0, len(payload)
        while True:
            chunk = view[off : off + RECORD_PAYLOAD]
            flags = (FIRST if off == 0 else 0) | (LAST if off + len(chunk) >= total else 0)
            rec = HEADER.pack(seq, op | REPLY, flags, 0, status, total) + chunk
            c.out.append(rec)
            c.out_bytes += len(rec)
            off += len(chunk)
            if off >= total:
                break
        self._flush(c)

    def _flush(self, c: _Conn) -> None:
        while c.out:
            try:
                c.sock.send(c.out[0])
            except BlockingIOError:
                break
            except OSError:
                # The worker is gone; its end of the channel closes with it.
                c.out.clear()
                c.out_bytes = 0
                break
            c.out_bytes -= len(c.out.popleft())
        # A worker that does not read its replies is not read either.
        # (When it is not read, its replies are queued, so EVENT_WRITE is set.)
        c.reading = c.out_bytes < OUT_MAX_BYTES
        events = (selectors.EVENT_READ if c.reading else 0) | (selectors.EVENT_WRITE if c.out else 0)
        if events != c.events and c.sock.fileno() >= 0:
            c.events = events
            self.sel.modify(c.sock, events, c)
