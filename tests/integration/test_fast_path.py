"""The module fast path against a real server: module routes answered by the
server's own HTTP protocol (api/http_server.py) over pipelined worker
connections (runtime/client.py), with what HTTP/1.1 clients rely on:
pipelining, Expect: 100-continue, early 413, keep-alive, large bodies.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

from tests.conftest import Server, module, unique
from tests.integration.test_core import deployed

# A handler answering its name after sleeping the given milliseconds.
SLEEPER = """
static int {fn}(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {{
    (void)ctx; (void)req;
    usleep({ms} * 1000);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "{fn}");
    res->status = HTTP_200_OK;
    return 0;
}}
"""

# Answers "<length> <sha256 hex>" of the request body.
DIGEST = """
#include <openssl/sha.h>
static int digest(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)req->body, (size_t)req->content_length, md);
    int n = snprintf(res->body, HTTP_RESPONSE_SIZE, "%d ", req->content_length);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        n += snprintf(res->body + n, HTTP_RESPONSE_SIZE - n, "%02x", md[i]);
    res->status = HTTP_200_OK;
    return 0;
}
"""


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reader:
    """HTTP/1.1 responses (Content-Length framed) read off a raw socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self, wait: float) -> bool:
        """True if the server closes the connection within wait seconds."""
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    """Four requests in one write - a slow and a fast module route, the
    control plane, the fast route again - come back in the order sent."""
    name = unique("pipe")
    code = SLEEPER.format(fn="slow", ms=150) + SLEEPER.format(fn="fast", ms=0)
    deployed(server, module(name, [(f"/{name}/slow", "GET", "slow"), (f"/{name}/fast", "GET", "fast")], code))
    with connect(server) as sock:
        sock.sendall(b"".join(
            f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            for p in (f"/{name}/slow", f"/{name}/fast", "/healthz", f"/{name}/fast")
        ))
        reader = Reader(sock)
        answers = [reader.response() for _ in range(4)]
    assert [(200, b"slow"), (200, b"fast")] == [(s, b) for s, _, b in answers[:2]]
    assert 200 == answers[2][0] and "ok" in json.loads(answers[2][2]).get("status", "ok")
    assert (200, b"fast") == (answers[3][0], answers[3][2])


def test_expect_100_continue_on_a_module_route(server: Server) -> None:
    """A client that waits for 100 Continue before its body (curl does, for
    large uploads) gets it, then the module sees the whole body."""
    name = unique("expect")
    deployed(server, module(name, [(f"/{name}", "POST", "digest")], DIGEST))
    body = bytes(range(256)) * 20
    with connect(server) as sock:
        sock.sendall(f"POST /{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        sock.sendall(body)
        reader = Reader(sock)
        reader.buf = interim.partition(b"\r\n\r\n")[2]
        status, _, answer = reader.response()
    assert (200, f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()) == (status, answer)


def test_declared_oversized_body_is_refused_before_it_is_sent(make_server) -> None:
    """A Content-Length over CWEB_MAX_BODY_BYTES is answered 413 from the
    headers alone, and the connection closed: the body is never read."""
    s = make_server(env={"CWEB_MAX_BODY_BYTES": "1000"})
    name = unique("early")
    deployed(s, module(name, [(f"/{name}", "POST", "digest")], DIGEST))
    with connect(s) as sock:
        sock.sendall(f"POST /{name} HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n".encode())
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert (413, "application/json", "body_too_large") == (status, headers["content-type"], json.loads(body)["error"])
        assert "close" == headers.get("connection")
        assert reader.closed(5)


def test_large_bodies_arrive_whole(server: Server) -> None:
    """A 3 MiB upload (many reads, joined into one frame) reaches the module
    byte for byte."""
    name = unique("bigup")
    deployed(server, module(name, [(f"/{name}", "POST", "digest")], DIGEST))
    body = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32)
    with server.client() as c:
        r = c.post(f"/{name}", content=body)
    assert (200, f"{len(body)} {hashlib.sha256(body).hexdigest()}") == (r.status_code, r.text)


def test_large_bodies_read_past_the_parser_keep_the_requests_around_them(server: Server) -> None:
    """Bodies from RAW_BODY_FROM bytes are taken from the reads as they come,
    past httptools: cut into awkward writes (the headers alone, a few bytes,
    the rest with the next requests behind it in the same write), each body
    reaches the module whole and every pipelined request after it is parsed
    and answered in order, a small body and a form included."""
    name = unique("raw")
    deployed(server, module(name, [(f"/{name}", "POST", "digest"), (f"/{name}/fast", "GET", "fast")],
                            DIGEST + SLEEPER.format(fn="fast", ms=0)))
    big = hashlib.sha256(b"raw").digest() * (200_000 // 32)
    other = bytes(range(256)) * 400  # 102,400 bytes
    small = b"hello"

    def post(body: bytes, extra: str = "") -> bytes:
        return f"POST /{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body

    def digest(body: bytes) -> bytes:
        return f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()

    first = post(big)
    head_end = first.index(b"\r\n\r\n") + 4
    stream = first[head_end:] + post(small) + f"GET /{name}/fast HTTP/1.1\r\nHost: x\r\n\r\n".encode() + post(other)
    stream += post(b"a=1&b=2", "Content-Type: application/x-www-form-urlencoded\r\n")
    with connect(server) as sock:
        sock.sendall(first[:head_end])
        time.sleep(0.2)  # the headers in a read of their own
        sock.sendall(stream[:7])
        time.sleep(0.2)
        for i in range(7, len(stream), 70_001):
            sock.sendall(stream[i : i + 70_001])
        reader = Reader(sock)
        answers = [reader.response() for _ in range(5)]
    assert [(200, digest(big)), (200, digest(small)), (200, b"fast"), (200, digest(other)), (200, digest(b"a=1&b=2"))] == [
        (s, b) for s, _, b in answers]


def test_idle_keep_alive_connection_is_closed(server: Server) -> None:
    """After an answer, a connection that sends nothing more is closed after
    the keep-alive timeout (5 s), not kept forever."""
    name = unique("idle")
    deployed(server, module(name, [(f"/{name}", "GET", "fast")], SLEEPER.format(fn="fast", ms=0)))
    with connect(server) as sock:
        sock.sendall(f"GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reader = Reader(sock)
        assert (200, b"fast") == (lambda r: (r[0], r[2]))(reader.response())
        t0 = time.monotonic()
        assert reader.closed(12)
        assert 4 <= time.monotonic() - t0 < 9


def test_fast_requests_do_not_queue_behind_a_slow_handler(make_server) -> None:
    """With two worker connections, one held by a 2 s handler, fast requests
    from four clients go to the other connection: none waits for the slow
    one (requests are pipelined only behind requests that are young)."""
    s = make_server(env={"CWEB_WORKER_THREADS": "2"})
    name = unique("hol")
    code = SLEEPER.format(fn="slow", ms=2000) + SLEEPER.format(fn="fast", ms=1)
    deployed(s, module(name, [(f"/{name}/slow", "GET", "slow"), (f"/{name}/fast", "GET", "fast")], code))
    slow: list[int] = []
    slow_thread = threading.Thread(target=lambda: slow.append(s.client().get(f"/{name}/slow").status_code))
    slow_thread.start()
    time.sleep(0.3)
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        with s.client() as c:
            for _ in range(15):
                t0 = time.monotonic()
                r = c.get(f"/{name}/fast")
                latencies.append(time.monotonic() - t0)
                if (r.status_code, r.text) != (200, "fast"):
                    errors.append(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    slow_thread.join(30)
    assert [] == errors
    assert [200] == slow
    assert 60 == len(latencies)
    assert max(latencies) < 1.0, sorted(latencies)[-5:]


def test_requests_beyond_the_pool_wait_their_turn(make_server) -> None:
    """One worker connection and 30 concurrent calls of a 40 ms handler: those
    without room wait in the backlog and all are answered, in about the time
    the one thread needs for all of them."""
    s = make_server(env={"CWEB_WORKER_THREADS": "1"})
    name = unique("backlog")
    deployed(s, module(name, [(f"/{name}", "GET", "slow")], SLEEPER.format(fn="slow", ms=40)))
    answers: list[tuple[int, str]] = []

    def call() -> None:
        with s.client() as c:
            r = c.get(f"/{name}")
            answers.append((r.status_code, r.text))

    t0 = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    assert [(200, "slow")] * 30 == answers
    assert 30 * 0.04 <= elapsed < 20


def test_waiting_requests_fail_cleanly_when_the_worker_dies(make_server) -> None:
    """Requests queued behind a handler that crashes its worker get a JSON
    502 naming the module, not a hung connection; the module then serves again."""
    s = make_server(env={"CWEB_WORKER_THREADS": "1"})
    name = unique("die")
    code = """
static int boom(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req; (void)res;
    usleep(300 * 1000);
    raise(SIGSEGV);
    return 0;
}
""" + SLEEPER.format(fn="slow", ms=10)
    deployed(s, module(name, [(f"/{name}/boom", "GET", "boom"), (f"/{name}/slow", "GET", "slow")], code))
    answers: list[tuple[int, str]] = []

    def call(path: str) -> None:
        with s.client() as c:
            r = c.get(path)
            answers.append((r.status_code, r.json().get("error", "") if r.status_code != 200 else r.text))

    first = threading.Thread(target=call, args=(f"/{name}/boom",))
    first.start()
    time.sleep(0.1)
    rest = [threading.Thread(target=call, args=(f"/{name}/slow",)) for _ in range(5)]
    for t in rest:
        t.start()
    for t in [first, *rest]:
        t.join(30)
    assert 6 == len(answers)
    assert (502, "worker_crashed") in answers
    assert all(a in ((502, "worker_crashed"), (200, "slow")) for a in answers), answers
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with s.client() as c:
            r = c.get(f"/{name}/slow")
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert (200, "slow") == (r.status_code, r.text)
