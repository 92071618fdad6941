#!/usr/bin/env python3
"""WebSocket figures: echo round trip for one client, and fan-out of one
broadcast to 1,000 clients.

- echo: one client sends a text message and waits for the module's answer,
  sequentially, N times (5,000, or 10 s, whichever ends first; quick: 1,000
  or 3 s) after 200 unmeasured ones. p50/p99 of the round trip and the
  messages per second that rate gives.
- fan-out: 1,000 clients join a room module; one of them sends a message the
  module broadcasts to everyone. Time from just before that send until the
  last of the 1,000 clients has the whole frame; 5 rounds (quick: 3), median.

The clients are plain blocking sockets speaking the protocol through the
`websockets` library's sans-I/O ClientProtocol, so the client adds little of
its own to what is measured. How little is measured in the same run: the
same echo against a floor server (`--floor-server`, a blocking loop around
websockets' sans-I/O ServerProtocol in a process of its own, no module, no
worker): what is left of the round trip is the client, the library's
framing and loopback. Targets (issue 19): echo >= 12,000 msgs/s and p50 <=
80 us; fan-out to 1,000 clients <= 20 ms.

    .venv/bin/python bench/sockets.py            # starts its own server on a free loopback port
    .venv/bin/python bench/sockets.py --quick
    .venv/bin/python bench/sockets.py --url http://127.0.0.1:8080 [--key KEY]

`run(cweb_url, quick)` is the entry point for bench/run.py; it returns
{"workloads": [...]} and prints a table. Every loop is bounded in count and
time; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ is sys.path[0], where bench/http.py would shadow the
# standard library's `http` (which httpx imports).
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import selectors  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import httpx  # noqa: E402
from websockets.client import ClientProtocol  # noqa: E402
from websockets.frames import Frame, Opcode  # noqa: E402
from websockets.http11 import Request, Response  # noqa: E402
from websockets.uri import parse_uri  # noqa: E402

from bench.server import free_port, start_cweb, stop_cweb  # noqa: E402

ECHO_RATE_TARGET = 12000.0
ECHO_P50_TARGET_MS = 0.080
FANOUT_TARGET_MS = 20.0
FANOUT_CLIENTS = 1000
IO_TIMEOUT_S = 10.0

ECHO_C = """
#include <cweb.h>
static void echo(struct cweb_context *ctx, websocket_t *ws, const char *msg, size_t len) {
    (void)ctx;
    ws->send(ws, msg, len);
}
export module_t config = {
    .name = "NAME", .author = "bench",
    .websockets = { {"/NAME/ws", NULL, echo, NULL} }, .ws_size = 1,
};
"""

# Everyone who opened is in the room; every message goes to all of them.
ROOM_C = """
#include <cweb.h>
#define MAX_MEMBERS 4096
static websocket_t *members[MAX_MEMBERS];
static int count;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void join(struct cweb_context *ctx, websocket_t *ws) {
    (void)ctx;
    pthread_mutex_lock(&lock);
    if (count < MAX_MEMBERS)
        members[count++] = ws;
    pthread_mutex_unlock(&lock);
}

static void leave(struct cweb_context *ctx, websocket_t *ws) {
    (void)ctx;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < count; i++)
        if (members[i] == ws) { members[i] = members[--count]; break; }
    pthread_mutex_unlock(&lock);
}

static void say(struct cweb_context *ctx, websocket_t *ws, const char *msg, size_t len) {
    (void)ctx; (void)ws;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < count; i++)
        members[i]->send(members[i], msg, len);
    pthread_mutex_unlock(&lock);
}

export module_t config = {
    .name = "NAME", .author = "bench",
    .websockets = { {"/NAME/ws", join, say, leave} }, .ws_size = 1,
};
"""


# ---- a lean blocking client ----------------------------------------------


class Client:
    """One WebSocket connection on a blocking socket, framed by websockets' sans-I/O protocol."""

    def __init__(self, ws_url: str) -> None:
        u = urlsplit(ws_url)
        self.proto = ClientProtocol(parse_uri(ws_url), max_size=None)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=IO_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proto.send_request(self.proto.connect())
        self.flush()
        self.pending: list[Frame] = []
        deadline = time.monotonic() + IO_TIMEOUT_S
        while not any(isinstance(e, Response) for e in self._feed_once()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no handshake answer from {ws_url}")
        if self.proto.handshake_exc is not None:
            raise self.proto.handshake_exc

    def flush(self) -> None:
        out = self.proto.data_to_send()
        if out:
            self.sock.sendall(b"".join(out))

    def _feed_once(self) -> list:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("server closed the connection")
        return self.feed(data)

    def feed(self, data: bytes) -> list:
        """Bytes read elsewhere; answers pings; returns the events."""
        self.proto.receive_data(data)
        events = self.proto.events_received()
        self.flush()
        for e in events:
            if isinstance(e, Frame) and e.opcode in (Opcode.TEXT, Opcode.BINARY):
                self.pending.append(e)
            elif isinstance(e, Frame) and e.opcode == Opcode.CLOSE:
                raise ConnectionError(f"server closed the socket: {self.proto.close_code}")
        return events

    def send(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self.flush()

    def recv(self) -> str:
        while not self.pending:
            self._feed_once()
        return self.pending.pop(0).data.decode()

    def close(self) -> None:
        try:
            self.proto.send_close(1000)
            self.flush()
        except OSError:
            pass
        self.sock.close()


# ---- measurements ------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure_echo(ws_url: str, messages: int, limit_s: float) -> dict:
    c = Client(ws_url)
    try:
        for i in range(200):
            c.send(f"warm {i}")
            c.recv()
        rtts = []
        start = time.perf_counter()
        deadline = start + limit_s
        for i in range(messages):
            text = f"echo {i}"
            t0 = time.perf_counter()
            c.send(text)
            got = c.recv()
            t1 = time.perf_counter()
            if got != text:
                raise AssertionError(f"echo answered {got!r} to {text!r}")
            rtts.append((t1 - t0) * 1000)
            if t1 > deadline:
                break
        elapsed = time.perf_counter() - start
    finally:
        c.close()
    return {
        "messages": len(rtts), "seconds": round(elapsed, 3),
        "msgs_per_s": round(len(rtts) / elapsed, 1),
        "p50_ms": round(_percentile(rtts, 0.50), 3), "p99_ms": round(_percentile(rtts, 0.99), 3),
        "mean_ms": round(statistics.fmean(rtts), 3),
    }


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def measure_fanout(ws_url: str, clients: int, rounds: int, pid: int | None = None) -> dict:
    _raise_fd_limit(2 * clients + 256)
    conns: list[Client] = []
    sel = selectors.DefaultSelector()
    try:
        for _ in range(clients):
            conns.append(Client(ws_url))
        for c in conns:
            c.sock.setblocking(False)
            sel.register(c.sock, selectors.EVENT_READ, c)
        # Every member has joined once a probe reaches all of them.
        _broadcast_round(conns, sel, "probe " + uuid.uuid4().hex[:8])
        cpu0 = _cpu_s(pid)
        times = [_broadcast_round(conns, sel, f"round {r} " + uuid.uuid4().hex[:8]) for r in range(rounds)]
        cpu_ms = (_cpu_s(pid) - cpu0) / rounds * 1000
    finally:
        sel.close()
        for c in conns:
            c.close()
    return {
        "clients": clients, "rounds": [round(t, 2) for t in times],
        "median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2),
        **({"api_cpu_ms_per_broadcast": round(cpu_ms, 2)} if pid is not None else {}),
    }


def _broadcast_round(conns: list[Client], sel: selectors.BaseSelector, text: str) -> float:
    """ms from sending text on conns[0] until every client has the frame."""
    payload = text.encode()
    assert len(payload) < 126
    frame = bytes([0x81, len(payload)]) + payload  # FIN + text, unmasked (server to client)
    got: dict[int, bytearray] = {id(c): bytearray() for c in conns}
    waiting = set(got)
    sender = conns[0]
    sender.sock.setblocking(True)
    t0 = time.perf_counter()
    sender.send(text)
    sender.sock.setblocking(False)
    deadline = t0 + IO_TIMEOUT_S
    t_last = t0
    while waiting:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(waiting)} of {len(conns)} clients did not get the broadcast")
        for key, _ in sel.select(0.5):
            c = key.data
            try:
                data = c.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("server closed a fan-out client")
            buf = got[id(c)]
            buf += data
            if id(c) in waiting and buf.endswith(frame):
                waiting.discard(id(c))
                t_last = time.perf_counter()
    elapsed_ms = (t_last - t0) * 1000
    # Outside the timed part: parse what came (answers any ping) and check it.
    for c in conns:
        c.feed(bytes(got[id(c)]))
        texts = [f.data.decode() for f in c.pending]
        c.pending.clear()
        if text not in texts:
            raise AssertionError(f"a client got {texts!r}, not {text!r}")
    return elapsed_ms


# ---- driving a server ----------------------------------------------------------


def _deploy(http: httpx.Client, source: str) -> None:
    r = http.post("/mgnt", files={"code": ("bench.c", source.encode(), "text/x-c")})
    if r.status_code != 200:
        raise RuntimeError(f"deploy failed: {r.status_code} {r.text[:500]}")


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of process pid so far (0 without one)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(cweb_url: str, quick: bool = False, key: str | None = None, pid: int | None = None) -> dict:
    """Deploy the echo and room modules on cweb_url, measure, remove them.

    pid: the api's process, when it runs here; its CPU per echo and per
    broadcast is then reported too (a figure the machine's load moves less
    than the round trip)."""
    tag = uuid.uuid4().hex[:8]
    echo_name, room_name = f"bench_echo_{tag}", f"bench_room_{tag}"
    ws_base = "ws" + cweb_url[len("http"):] if cweb_url.startswith("http") else cweb_url
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=cweb_url, timeout=120, headers=headers) as http:
        _deploy(http, ECHO_C.replace("NAME", echo_name))
        _deploy(http, ROOM_C.replace("NAME", room_name))
        try:
            cpu0 = _cpu_s(pid)
            echo = measure_echo(f"{ws_base}/{echo_name}/ws", 1000 if quick else 5000, 3.0 if quick else 10.0)
            if pid is not None:  # includes the 200 warm-up messages
                echo["api_cpu_us_per_msg"] = round((_cpu_s(pid) - cpu0) / (echo["messages"] + 200) * 1e6, 1)
            fanout = measure_fanout(f"{ws_base}/{room_name}/ws", FANOUT_CLIENTS, 3 if quick else 5, pid)
        finally:
            for name in (echo_name, room_name):
                http.delete(f"/modules/{name}")
    return {"echo": echo, "fanout": fanout, "floor": measure_floor(quick)}


def measure_floor(quick: bool = False) -> dict:
    """The echo measurement against floor_server in a process of its own."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--floor-server", str(port)],
                            cwd=str(ROOT), stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the floor server did not start")
        return measure_echo(f"ws://127.0.0.1:{port}/", 1000 if quick else 5000, 3.0 if quick else 10.0)
    finally:
        proc.kill()
        proc.wait()


def floor_server(port: int) -> None:
    """Echo every message of one connection at a time: a blocking socket and
    websockets' ServerProtocol, nothing else (the client's floor)."""
    from websockets.server import ServerProtocol

    listener = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        proto = ServerProtocol(max_size=None)
        try:
            while data := sock.recv(1 << 16):
                proto.receive_data(data)
                for event in proto.events_received():
                    if isinstance(event, Request):
                        proto.send_response(proto.accept(event))
                    elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                        proto.send_text(event.data)
                out = proto.data_to_send()
                if out:
                    sock.sendall(b"".join(out))
                if proto.close_expected():
                    break
        except OSError:
            pass
        sock.close()


def workloads(m: dict) -> list[dict]:
    e, f = m["echo"], m["fanout"]
    return [
        {
            "name": "ws_echo_c1", "group": "sockets", "metric": "msgs/s", "value": e["msgs_per_s"],
            "p50_ms": e["p50_ms"], "p99_ms": e["p99_ms"], "messages": e["messages"],
            **({"api_cpu_us_per_msg": e["api_cpu_us_per_msg"]} if "api_cpu_us_per_msg" in e else {}),
            "target": f"≥ {ECHO_RATE_TARGET:,.0f} msgs/s, p50 ≤ {ECHO_P50_TARGET_MS * 1000:g} µs",
            "meets_target": e["msgs_per_s"] >= ECHO_RATE_TARGET and e["p50_ms"] <= ECHO_P50_TARGET_MS,
            "description": "one client, sequential text echo round trips through a module",
        },
        *([{
            "name": "ws_echo_client_floor", "group": "sockets", "metric": "msgs/s", "value": m["floor"]["msgs_per_s"],
            "p50_ms": m["floor"]["p50_ms"], "p99_ms": m["floor"]["p99_ms"], "messages": m["floor"]["messages"],
            "target": "—", "meets_target": True,
            "description": "the same client against a blocking sans-I/O echo server of its own (no cweb): "
                           "what the client, framing and loopback cost",
        }] if m.get("floor") else []),
        {
            "name": "ws_broadcast_1000", "group": "sockets", "metric": "ms", "value": f["median_ms"],
            "p50_ms": f["median_ms"], "p99_ms": f["max_ms"], "rounds": f["rounds"], "clients": f["clients"],
            **({"api_cpu_ms_per_broadcast": f["api_cpu_ms_per_broadcast"]} if "api_cpu_ms_per_broadcast" in f else {}),
            "target": f"≤ {FANOUT_TARGET_MS:g} ms", "meets_target": f["median_ms"] <= FANOUT_TARGET_MS,
            "description": f"one message broadcast by a module to {f['clients']} clients: send until the last has it; "
                           f"median of {len(f['rounds'])}",
        },
    ]


def table(rows: list[dict]) -> str:
    lines = ["| workload | value | unit | p50 ms | p99 / max ms | target | met |", "|---|---:|---|---:|---:|---|---|"]
    for w in rows:
        lines.append(f"| {w['name']} | {w['value']:,} | {w['metric']} | {w['p50_ms']:.3f} | {w['p99_ms']:.3f} | "
                     f"{w['target']} | {'yes' if w['meets_target'] else '**no**'} |")
    return "\n".join(lines)


def run(cweb_url: str | None = None, quick: bool = False, server_tree: Path | None = None) -> dict:
    """bench/run.py's entry point: measure (on cweb_url, or on a server of
    our own), print the table, return {"workloads": [...], "raw": {...}}."""
    key = os.environ.get("CWEB_API_KEY") or None
    if cweb_url:
        m = measure(cweb_url, quick, key)
    else:
        with tempfile.TemporaryDirectory(prefix="cweb-bench-ws-") as tmp:
            proc, url = _start_server(Path(tmp), server_tree or ROOT)
            try:
                m = measure(url, quick, pid=proc.pid)
            finally:
                stop_cweb(proc)
    rows = workloads(m)
    print(table(rows), flush=True)
    return {"workloads": rows, "raw": m}


# ---- standalone: a server of our own -----------------------------------------


def _start_server(tmp: Path, root: Path) -> tuple[subprocess.Popen, str]:
    _raise_fd_limit(2 * FANOUT_CLIENTS + 256)  # inherited by the server
    return start_cweb(tmp / "data", root=root)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an already running server (default: start one on a free loopback port)")
    p.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    p.add_argument("--server-tree", type=Path, metavar="DIR",
                   help="run the server from another checkout (an A/B with the same client)")
    p.add_argument("--floor-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.floor_server:
        floor_server(args.floor_server)
        return
    if args.url and urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        p.error("the benchmark only targets a server on this machine (loopback)")
    result = run(args.url, args.quick, args.server_tree)
    raw = result["raw"]
    print(f"\necho: {raw['echo']}\nfan-out: {raw['fanout']}\nclient floor: {raw['floor']}")


if __name__ == "__main__":
    main()
