"""Module WebSockets against a real server, with a real client library.

Each test deploys real C modules (unique names and paths on the shared
session server, or its own server where it needs other limits) and talks
to them with the `websockets` client over loopback. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import socket
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import EXAMPLES, Server, unique

RECV_S = 10.0


# ---------------------------------------------------------------------------
# helpers


def run(coro: Awaitable[Any], timeout: float = 90.0) -> Any:
    """Run one test's client side on a fresh event loop, bounded in time."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def deployed(server: Server, source: str) -> dict:
    r = server.deploy(source)
    assert 200 == r.status_code, r.text
    return r.json()


def ws_connect(server: Server, path: str, **kw: Any) -> connect:
    kw.setdefault("compression", None)
    return connect(f"ws://127.0.0.1:{server.port}{path}", proxy=None, open_timeout=30, **kw)


async def recv(ws: ClientConnection, timeout: float = RECV_S) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


async def close_code(ws: ClientConnection, timeout: float = RECV_S, max_messages: int = 100) -> int | None:
    """Read until the server closes; the close code it sent (None: none)."""
    try:
        for _ in range(max_messages):
            await recv(ws, timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    raise AssertionError(f"still open after {max_messages} messages")


def echo_source(name: str) -> str:
    """example/websocket.c, renamed so it cannot clash on the shared server."""
    src = (EXAMPLES / "websocket.c").read_text()
    assert '.name = "websocket"' in src and '"/websocket"' in src
    return src.replace('.name = "websocket"', f'.name = "{name}"').replace('"/websocket"', f'"/{name}"')


def chat_source(name: str) -> str:
    """example/chat.c under a unique name and paths."""
    src = (EXAMPLES / "chat.c").read_text()
    assert '.name = "chat"' in src and '"/chat/ws"' in src and "'/chat/ws'" in src
    return (
        src.replace('.name = "chat"', f'.name = "{name}"')
        .replace('"/chat/ws"', f'"/{name}/ws"')
        .replace("'/chat/ws'", f"'/{name}/ws'")
        .replace('{"/chat", "GET"', f'{{"/{name}", "GET"')
    )


def socket_module(name: str, path: str, code: str, on_open: str = "NULL", on_message: str = "on_message",
                  on_close: str = "NULL", routes: str = "", size: int = 0) -> str:
    return f"""#include <cweb.h>
#include <unistd.h>
{code}
export module_t config = {{
    .name = "{name}", .author = "tests",
    .routes = {{ {routes} }}, .size = {size},
    .websockets = {{ {{"{path}", {on_open}, {on_message}, {on_close}}} }}, .ws_size = 1,
}};
"""


# Echoes text as text and binary as binary, then reports what ws->binary said;
# "close" makes the module close the socket itself.
KIT_CODE = r"""
static void on_message(struct cweb_context *ctx, websocket_t *ws, const char *msg, size_t len) {
    (void)ctx;
    char note[64];
    if (!ws->binary && len == 5 && memcmp(msg, "close", 5) == 0) {
        ws->send(ws, "bye", 3);
        ws->close(ws);
        return;
    }
    if (ws->binary)
        ws->send_binary(ws, msg, len);
    else
        ws->send(ws, msg, len);
    int n = snprintf(note, sizeof note, "binary=%d len=%zu", ws->binary, len);
    ws->send(ws, note, (size_t)n);
}
"""

# A room that greets each user it learns of (only through on_open) and
# broadcasts every message with its version and how many users it knows.
ROOM_CODE = r"""
static websocket_t *users[256];
static int nusers;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void on_open(struct cweb_context *ctx, websocket_t *ws) {
    (void)ctx;
    pthread_mutex_lock(&lock);
    if (nusers < 256)
        users[nusers++] = ws;
    pthread_mutex_unlock(&lock);
    ws->send(ws, VERSION " hello", strlen(VERSION " hello"));
}

static void on_close(struct cweb_context *ctx, websocket_t *ws) {
    (void)ctx;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < nusers; i++)
        if (users[i] == ws) { users[i] = users[--nusers]; break; }
    pthread_mutex_unlock(&lock);
}

static void on_message(struct cweb_context *ctx, websocket_t *ws, const char *msg, size_t len) {
    (void)ctx; (void)ws;
    char line[256];
    pthread_mutex_lock(&lock);
    int n = snprintf(line, sizeof line, "%s users=%d: %.*s", VERSION, nusers, (int)len, msg);
    for (int i = 0; i < nusers; i++)
        users[i]->send(users[i], line, (size_t)n);
    pthread_mutex_unlock(&lock);
}
"""

# Answers "ok <number of on_open this worker saw>: <msg>"; "crash" segfaults.
CRASH_CODE = r"""
#include <stdint.h>
static int opened;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void on_open(struct cweb_context *ctx, websocket_t *ws) {
    (void)ctx; (void)ws;
    pthread_mutex_lock(&lock);
    opened++;
    pthread_mutex_unlock(&lock);
}

static void on_message(struct cweb_context *ctx, websocket_t *ws, const char *msg, size_t len) {
    (void)ctx;
    if (len == 5 && memcmp(msg, "crash", 5) == 0) {
        volatile int *volatile nowhere = (volatile int *)(uintptr_t)strtoul("0", NULL, 10);
        *nowhere = 1;
    }
    char line[128];
    pthread_mutex_lock(&lock);
    int n = snprintf(line, sizeof line, "ok %d: %.*s", opened, (int)len, msg);
    pthread_mutex_unlock(&lock);
    ws->send(ws, line, (size_t)n);
}
"""


def live_module(server: Server, name: str) -> dict:
    with server.client() as c:
        r = c.get(f"/modules/{name}")
    assert 200 == r.status_code, r.text
    return r.json()


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.fixture(scope="module")
def kit(server: Server) -> str:
    """The text/binary/close module on the session server; yields its socket path."""
    name = unique("kit")
    deployed(server, socket_module(name, f"/{name}/ws", KIT_CODE))
    return f"/{name}/ws"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own with small socket limits: 4 KiB messages, 8 queued."""
    s = Server(
        tmp_path_factory.mktemp("cweb-limited") / "data",
        env={"CWEB_WS_MAX_MESSAGE": "4096", "CWEB_WS_QUEUE": "8"},
    ).start()
    yield s
    s.stop()


# ---------------------------------------------------------------------------
# messages


def test_echo_example_replies_you_message(server: Server) -> None:
    """example/websocket.c answers every text message with "You: <message>"."""
    name = unique("echo")
    deployed(server, echo_source(name))

    async def client() -> list:
        async with ws_connect(server, f"/{name}") as ws:
            got = []
            for text in ("hello", "", "second message", "ünïcødé ✓"):
                await ws.send(text)
                got.append(await recv(ws))
            return got

    assert ["You: hello", "You: ", "You: second message", "You: ünïcødé ✓"] == run(client())


def test_text_and_binary_frames_keep_their_kind(server: Server, kit: str) -> None:
    """A text frame reaches the module with ws->binary 0, a binary one with 1 and
    every byte (NULs included); send() answers text, send_binary() binary."""
    blob = bytes([0, 1, 2, 255, 0, 97, 98, 0])

    async def client() -> list:
        async with ws_connect(server, kit) as ws:
            out = []
            await ws.send("héllo")
            out += [await recv(ws), await recv(ws)]
            await ws.send(blob)
            out += [await recv(ws), await recv(ws)]
            await ws.send(b"")
            out += [await recv(ws), await recv(ws)]
            return out

    assert ["héllo", "binary=0 len=6", blob, "binary=1 len=8", b"", "binary=1 len=0"] == run(client())


def test_messages_of_one_connection_are_delivered_in_order(server: Server, kit: str) -> None:
    """Sent without waiting, 200 messages come back in the order they were sent."""

    async def client() -> list:
        async with ws_connect(server, kit) as ws:
            for i in range(200):
                await ws.send(f"m{i}")
            got = [await recv(ws) for _ in range(400)]
            return [m for m in got if not str(m).startswith("binary=")]

    assert [f"m{i}" for i in range(200)] == run(client())


def test_chat_example_broadcasts_to_every_client(server: Server) -> None:
    """example/chat.c: joins and messages reach every member of the room."""
    name = unique("chat")
    deployed(server, chat_source(name))

    async def client() -> tuple[list, list, str]:
        async with contextlib.AsyncExitStack() as stack:
            members: list[ClientConnection] = []
            joins = []
            for _ in range(3):
                ws = await stack.enter_async_context(ws_connect(server, f"/{name}/ws"))
                joins.append(str(await recv(ws)))  # its own join
                for m in members:  # everyone already in hears it too
                    assert joins[-1] == await recv(m)
                members.append(ws)
            a, b, c = members
            await b.send("hello room")
            said = [str(await recv(x)) for x in members]
            await c.close()
            left = [str(await recv(x)) for x in (a, b)]
            with httpx.Client(base_url=server.url) as http:
                page = http.get(f"/{name}").text
            return joins, said + left, page

    joins, heard, page = run(client())
    ids = [re.fullmatch(r"user (\d+) joined", j).group(1) for j in joins]  # type: ignore[union-attr]
    assert 3 == len(set(ids)), joins
    assert [f"user {ids[1]}: hello room"] * 3 + [f"user {ids[2]} left"] * 2 == heard
    assert "location.host" in page and '<div id="log">' in page


# ---------------------------------------------------------------------------
# hot swap


def test_hot_swap_keeps_connections_and_replays_on_open(server: Server) -> None:
    """Connections open across a redeploy stay open and are served by the new
    version, which got on_open for each of them, so its broadcasts reach
    clients that joined before the swap; a client joining afterwards too."""
    name = unique("room")
    path = f"/{name}/ws"

    def version(v: str) -> str:
        return socket_module(name, path, f'#define VERSION "{v}"\n' + ROOM_CODE,
                             on_open="on_open", on_close="on_close")

    first = deployed(server, version("v1"))

    async def client() -> None:
        async with contextlib.AsyncExitStack() as stack:
            a, b, c = [await stack.enter_async_context(ws_connect(server, path)) for _ in range(3)]
            assert ["v1 hello"] * 3 == [await recv(x) for x in (a, b, c)]
            await a.send("before")
            assert ["v1 users=3: before"] * 3 == [await recv(x) for x in (a, b, c)]

            second = await asyncio.to_thread(deployed, server, version("v2"))
            assert first["module_hash"] == second["previous_hash"]
            # The new version greets each connection it was handed.
            assert ["v2 hello"] * 3 == [await recv(x) for x in (a, b, c)]

            await b.send("after")
            assert ["v2 users=3: after"] * 3 == [await recv(x) for x in (a, b, c)]
            d = await stack.enter_async_context(ws_connect(server, path))
            assert "v2 hello" == await recv(d)
            await d.send("late")
            assert ["v2 users=4: late"] * 4 == [await recv(x) for x in (a, b, c, d)]

    run(client())
    assert wait_until(lambda: 0 == live_module(server, name)["connections"])


OLD_CODE = r"""
#define FLAG "swapped_" MODULE_NAME
static websocket_t *socks[16];
static int nsocks;
static int ticker_started;
static int sent_after_swap;
static struct cweb_context *g_ctx;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int swapped(void) {
    char b[4];
    return g_ctx && cweb_cache_get(g_ctx, FLAG, b, sizeof b) > 0;
}

/* Once the new version has re-opened the connection, keep sending on it and
 * closing it from this (old) version: the api must ignore all of it. */
static void *ticker(void *arg) {
    (void)arg;
    for (int i = 0; i < 3000; i++) {
        if (swapped()) {
            pthread_mutex_lock(&lock);
            for (int k = 0; k < nsocks; k++) {
                if (socks[k]->send(socks[k], "old version", 11) == 0)
                    sent_after_swap++;
                socks[k]->close(socks[k]);
            }
            pthread_mutex_unlock(&lock);
        }
        usleep(10000);
    }
    return NULL;
}

static void on_open(struct cweb_context *ctx, websocket_t *ws) {
    pthread_mutex_lock(&lock);
    g_ctx = ctx;
    if (nsocks < 16)
        socks[nsocks++] = ws;
    if (!ticker_started) {
        pthread_t t;
        ticker_started = pthread_create(&t, NULL, ticker, NULL) == 0;
        if (ticker_started)
            pthread_detach(t);
    }
    pthread_mutex_unlock(&lock);
    ws->send(ws, "v1 open", 7);
}

static void on_message(struct cweb_context *ctx, websocket_t *ws, const char *msg, size_t len) {
    (void)ctx; (void)msg; (void)len;
    ws->send(ws, "v1 message", 10);
}

/* Keeps the old version alive (in flight) until well after the swap. */
static int hold(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    pthread_mutex_lock(&lock);
    for (int k = 0; k < nsocks; k++)
        socks[k]->send(socks[k], "holding", 7);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < 2000 && !swapped(); i++)
        usleep(10000);
    usleep(500000);
    pthread_mutex_lock(&lock);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "sent=%d", sent_after_swap);
    pthread_mutex_unlock(&lock);
    res->status = HTTP_200_OK;
    return 0;
}
"""

NEW_CODE = r"""
static void on_open(struct cweb_context *ctx, websocket_t *ws) {
    cweb_cache_set(ctx, "swapped_" MODULE_NAME, "1", 1, 120);
    ws->send(ws, "v2 open", 7);
}

static void on_message(struct cweb_context *ctx, websocket_t *ws, const char *msg, size_t len) {
    (void)ctx;
    char line[128];
    int n = snprintf(line, sizeof line, "v2: %.*s", (int)len, msg);
    ws->send(ws, line, (size_t)n);
}
"""


def test_old_version_send_and_close_after_swap_are_ignored(server: Server) -> None:
    """After the swap the old version, still running (a request holds it),
    sends on and closes the migrated connection: the client sees none of it."""
    name = unique("old")
    path = f"/{name}/ws"
    define = f'#define MODULE_NAME "{name}"\n'
    old = socket_module(name, path, define + OLD_CODE, on_open="on_open",
                        routes=f'{{"/{name}/hold", "GET", hold, NONE}}', size=1)
    new = socket_module(name, path, define + NEW_CODE, on_open="on_open")
    deployed(server, old)
    with server.client() as c:  # compile the new version now, so the swap itself is quick
        assert 200 == c.post("/mgnt", params={"check": 1}, files={"code": ("m.c", new.encode(), "text/x-c")}).status_code

    async def client() -> tuple[list, str]:
        async with ws_connect(server, path) as ws:
            assert "v1 open" == await recv(ws)
            with httpx.Client(base_url=server.url, timeout=60) as http:
                hold = asyncio.create_task(asyncio.to_thread(http.get, f"/{name}/hold"))
                assert "holding" == await recv(ws)
                await asyncio.to_thread(deployed, server, new)
                got = [await recv(ws)]
                held = await hold
            assert 200 == held.status_code, held.text
            await ws.send("still here?")
            got.append(await recv(ws))
            return got, held.text

    got, held = run(client())
    assert ["v2 open", "v2: still here?"] == got
    assert int(held.removeprefix("sent=")) > 0, held  # the old version really did send


# ---------------------------------------------------------------------------
# crashes


def test_segfault_in_on_message_keeps_connections_and_service_resumes(server: Server, kit: str) -> None:
    """A module that segfaults in on_message: another module's socket keeps
    working throughout; this module's connections stay open, the restarted
    worker gets on_open for each, and the next message is answered.

    (The message that crashed the worker, and any other message in flight to
    it at that moment, is lost: see docs/SDK-websockets.md.)"""
    name = unique("crash")
    path = f"/{name}/ws"
    deployed(server, socket_module(name, path, CRASH_CODE, on_open="on_open"))

    async def client() -> list:
        async with ws_connect(server, path) as a, ws_connect(server, path) as b, ws_connect(server, kit) as other:
            await a.send("first")
            assert re.fullmatch(r"ok [12]: first", str(await recv(a)))
            await a.send("crash")
            await other.send("other module")
            assert ["other module", "binary=0 len=12"] == [await recv(other), await recv(other)]
            # a's next message waits for the restart and is answered there.
            await a.send("after")
            got = [str(await recv(a, 30))]
            # b, idle through the crash, is still connected and served.
            await b.send("b after")
            got.append(str(await recv(b)))
            # Each connection was re-opened exactly once on the new worker.
            await a.send("again")
            got.append(str(await recv(a)))
            return got

    after, b_after, again = run(client())
    assert re.fullmatch(r"ok [12]: after", after), after
    assert re.fullmatch(r"ok [12]: b after", b_after), b_after
    assert "ok 2: again" == again
    assert "active" == live_module(server, name)["state"]
    assert "worker crashed" in server.logs()


# ---------------------------------------------------------------------------
# scale


def test_a_thousand_concurrent_connections(server: Server, make_server: Any) -> None:
    """1,000 clients connected at once each get their own echo."""
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < n + 64:
        pytest.skip(f"open-file limit {hard} is too low for {n} sockets")
    target = server if _server_fd_limit(server) >= want else make_server()
    name = unique("many")
    deployed(target, echo_source(name))

    async def client() -> tuple[int, list]:
        conns: list[ClientConnection] = []
        gate = asyncio.Semaphore(100)

        async def open_one() -> ClientConnection:
            async with gate:
                return await ws_connect(target, f"/{name}", max_queue=4).__aenter__()

        try:
            conns = list(await asyncio.gather(*(open_one() for _ in range(n))))
            live = (await asyncio.to_thread(live_module, target, name))["connections"]

            async def one(i: int, ws: ClientConnection) -> str:
                await ws.send(f"c{i}")
                return str(await recv(ws, 60))

            answers = await asyncio.gather(*(one(i, ws) for i, ws in enumerate(conns)))
            return live, [a for i, a in enumerate(answers) if a != f"You: c{i}"]
        finally:
            await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)

    live, wrong = run(client(), timeout=100)
    assert n == live
    assert [] == wrong
    assert wait_until(lambda: 0 == live_module(target, name)["connections"], 20)


def _server_fd_limit(server: Server) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


# ---------------------------------------------------------------------------
# limits and close codes


def test_message_over_the_limit_closes_1009(limited: Server) -> None:
    """With CWEB_WS_MAX_MESSAGE=4096 a 4096-byte message is served and a
    4097-byte one closes the connection with 1009 (message too big)."""
    name = unique("echo")
    deployed(limited, echo_source(name))

    async def client() -> tuple[str, int | None]:
        async with ws_connect(limited, f"/{name}") as ws:
            await ws.send("a" * 4096)
            ok = str(await recv(ws))
            await ws.send("a" * 4097)
            return ok, await close_code(ws)

    ok, code = run(client())
    assert "You: " + "a" * 4096 == ok
    assert 1009 == code


FLOOD_CODE = r"""
static char chunk[32768];

static void on_message(struct cweb_context *ctx, websocket_t *ws, const char *msg, size_t len) {
    (void)ctx;
    if (len == 5 && memcmp(msg, "flood", 5) == 0) {
        memset(chunk, 'x', sizeof chunk);
        for (int i = 0; i < 200; i++)
            ws->send(ws, chunk, sizeof chunk);
        return;
    }
    ws->send(ws, "pong", 4);
}
"""


def test_slow_client_is_closed_1013_and_others_are_unaffected(limited: Server) -> None:
    """With CWEB_WS_QUEUE=8, a client that reads nothing while the module
    floods it is closed with 1013; a client reading normally is not."""
    name = unique("flood")
    path = f"/{name}/ws"
    deployed(limited, socket_module(name, path, FLOOD_CODE))
    floods = 3

    def small_socket() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no autotuning to megabytes
        s.connect(("127.0.0.1", limited.port))
        return s

    async def client() -> tuple[list, int | None, int]:
        async with ws_connect(limited, path, sock=small_socket(), max_queue=1) as slow, \
                ws_connect(limited, path) as normal:
            for _ in range(floods):
                await slow.send("flood")
            await asyncio.to_thread(wait_until, lambda: "is not reading; closing it" in limited.logs(), 30)
            pongs = []
            for _ in range(3):
                await normal.send("ping")
                pongs.append(await recv(normal))
            # Now drain the slow client: what was in flight, then the close.
            received = 0
            code = None
            try:
                for _ in range(floods * 200 + 10):
                    await recv(slow, 20)
                    received += 1
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            return pongs, code, received

    pongs, code, received = run(client())
    assert ["pong"] * 3 == pongs
    assert 1013 == code
    assert received < floods * 200


def test_module_close_is_seen_as_1000(server: Server, kit: str) -> None:
    """ws->close(ws) from the module closes the client with 1000, after what
    the module sent before it."""

    async def client() -> tuple[str, int | None]:
        async with ws_connect(server, kit) as ws:
            await ws.send("close")
            return str(await recv(ws)), await close_code(ws)

    assert ("bye", 1000) == run(client())


def test_removing_the_module_closes_its_sockets_1001(server: Server) -> None:
    """DELETE /modules/{name} closes that module's connections with 1001."""
    name = unique("gone")
    deployed(server, socket_module(name, f"/{name}/ws", KIT_CODE))

    async def client() -> int | None:
        async with ws_connect(server, f"/{name}/ws") as ws:
            await ws.send("hi")
            await recv(ws)
            await recv(ws)
            with httpx.Client(base_url=server.url) as http:
                r = await asyncio.to_thread(http.delete, f"/modules/{name}")
            assert 200 == r.status_code, r.text
            return await close_code(ws)

    assert 1001 == run(client())


def test_redeploy_without_the_path_closes_its_sockets_1001(server: Server) -> None:
    """A new version that no longer declares a socket path closes the
    connections on it with 1001 at the swap, without waiting for a message."""
    name = unique("moved")
    deployed(server, socket_module(name, f"/{name}/old", KIT_CODE))

    async def client() -> int | None:
        async with ws_connect(server, f"/{name}/old") as ws:
            await ws.send("hi")
            assert ["hi", "binary=0 len=2"] == [await recv(ws), await recv(ws)]
            await asyncio.to_thread(deployed, server, socket_module(name, f"/{name}/new", KIT_CODE))
            return await close_code(ws)

    assert 1001 == run(client())


def test_unknown_socket_path_is_refused(server: Server) -> None:
    """A WebSocket handshake on a path no module serves is refused (HTTP 403)."""
    from websockets.exceptions import InvalidStatus

    async def client() -> int:
        try:
            async with ws_connect(server, f"/{unique('none')}/ws"):
                pass
        except InvalidStatus as exc:
            return exc.response.status_code
        return 101

    assert 403 == run(client())


# ---------------------------------------------------------------------------
# paths and listing


def test_socket_path_owned_by_another_module_is_409(server: Server, kit: str) -> None:
    name = unique("dup")
    r = server.deploy(socket_module(name, kit, KIT_CODE))
    assert 409 == r.status_code, r.text
    assert "route_conflict" == r.json()["error"]


@pytest.mark.parametrize("path", ["/jobs/ws2", "/modules/live", "/mgnt/ws"])
def test_socket_path_under_a_reserved_prefix_is_422(server: Server, path: str) -> None:
    r = server.deploy(socket_module(unique("rsv"), path, KIT_CODE))
    assert 422 == r.status_code, r.text
    assert "reserved_path" == r.json()["error"]


def test_modules_lists_socket_paths_and_live_connections(server: Server) -> None:
    """GET /modules shows each module's socket paths and how many clients are connected now."""
    name = unique("count")
    path = f"/{name}/ws"
    deployed(server, socket_module(name, path, KIT_CODE))

    def listed() -> dict:
        with server.client() as c:
            mods = c.get("/modules").json()["modules"]
        return next(m for m in mods if m["name"] == name)

    assert [{"path": path}] == listed()["websockets"]
    assert 0 == listed()["connections"]

    async def client() -> tuple[int, int]:
        async with ws_connect(server, path) as a:
            async with ws_connect(server, path):
                both = (await asyncio.to_thread(listed))["connections"]
            await asyncio.to_thread(wait_until, lambda: 1 == listed()["connections"])
            one = (await asyncio.to_thread(listed))["connections"]
            await a.send("still open")
            assert "still open" == await recv(a)
            return both, one

    assert (2, 1) == run(client())
    assert wait_until(lambda: 0 == listed()["connections"])
