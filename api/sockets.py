"""Module WebSockets: the api holds every client socket; module code sees
on_open / on_message / on_close in the worker of the module's active version.

A connection remembers which worker has seen its on_open. Whenever the
module's active worker changes (hot swap, crash restart), every connection
is re-opened on the new worker before its next message, and frames the old
worker still sends for it are dropped.

Delivery is in order and one event at a time per connection. An event whose
worker dies while handling it is not retried (it may be what crashed the
worker); one that had not reached the worker yet goes to its replacement.
Either way the connection stays open and is re-opened on the new worker.

Clients reach the hub by direct calls from the server's own WebSocket
protocol (api/ws_protocol.py: `open`, `receive`, `gone`). A message whose
connection is idle and whose worker is the one that saw on_open goes to the
worker from the read that brought it, and the next one from the read that
brings the worker's answer: no task, no future. Anything else (re-open after
a swap, a restart to wait for, a worker gone) runs async code in a task that
holds the connection's turn. An upgrade that reaches the hub through ASGI
(`__call__`) is one no socket path matched when its headers were read: it
is refused.

Outbound, a frame from a worker is written to the client's socket at once
when nothing is queued for it and the socket takes data; otherwise it waits
in the connection's queue, drained by one sender task. A connection whose
client does not read is closed with 1013 once `queue_limit` frames wait for
it while its socket is not draining.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from api.modules.version import GONE, VersionState
from runtime import protocol
from runtime.client import WorkerGone

if TYPE_CHECKING:
    from api.modules.host import ModuleHost
    from api.modules.version import Version
    from api.routing import Entry

log = logging.getLogger("cweb.api")

# Bound once: reading a member off an Enum class costs ~0.3 us on Python 3.11.
_ACTIVE, _RESTARTING, _QUARANTINED = VersionState.ACTIVE, VersionState.RESTARTING, VersionState.QUARANTINED

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013

# How long an event waits for a crashed worker to be restarted.
RESTART_WAIT_S = 10.0
# However fast the client reads, a connection never holds more than this many
# times queue_limit undelivered messages (a burst from one worker read).
BURST_FACTOR = 16
# How long a finished connection waits for its close frame to go out.
CLOSE_FLUSH_S = 5.0
# Tries per event: a frame that never reached a crashed worker is sent again
# once to its replacement.
ATTEMPTS = 2

DELIVERED, LOST, RETRY = "delivered", "lost", "retry"


class Turn:
    """A connection's turn to talk to its worker: one event at a time, in
    order. Like asyncio.Lock, but it can be taken without awaiting when it is
    free (the direct path takes it from a read), it passes to waiters in
    the order they came, and calls on_free once nobody holds it."""

    __slots__ = ("held", "waiters", "on_free")

    def __init__(self) -> None:
        self.held = False
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.on_free: Callable[[], None] | None = None

    def take_now(self) -> bool:
        if self.held or self.waiters:
            return False
        self.held = True
        return True

    async def __aenter__(self) -> None:
        if not self.held and not self.waiters:
            self.held = True
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed the turn, then cancelled before using it
            else:
                self.waiters.remove(fut)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # handed over: still held
                return
        self.held = False
        if self.on_free is not None:
            self.on_free()


@dataclass(eq=False)
class Conn:
    conn_id: int
    path: str
    module: str
    send: Callable
    queue: asyncio.Queue
    worker_id: int = 0
    turn: Turn = field(default_factory=Turn)
    closed: bool = False
    # True while the sender waits for the client's socket to drain.
    blocked: bool = False
    sender: asyncio.Task | None = None
    # WS_OPEN's data: the path, then NUL and ws->session when there is one.
    open_data: bytes = b""
    # push(data, binary) writes a frame at once, False if the socket does not
    # take data now; the client's messages waiting for the turn (None: the
    # client left); drained() is called whenever inbox is empty.
    push: Callable[[bytes, bool], bool] | None = None
    inbox: collections.deque = field(default_factory=collections.deque)
    drained: Callable[[], None] | None = None
    # The client is gone; its on_close is queued behind the inbox.
    left: bool = False


def _open_data(path: str, query_string: bytes) -> bytes:
    """c-web-modules sets ws->session to "<id>|<since_event_id or 0>" when
    the handshake's query has an id, and leaves it NULL otherwise."""
    data = path.encode()
    params = urllib.parse.parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    if "id" in params:
        since = params.get("since_event_id", ["0"])[0]
        data += b"\0" + f"{params['id'][0]}|{since}".encode("utf-8", "replace")
    return data


class SocketHub:
    def __init__(self, host: ModuleHost, queue_limit: int = 256, timeout: float = 30.0, metrics: Any = None) -> None:
        self.host = host
        self.queue_limit = max(1, queue_limit)
        self.timeout = timeout
        self.conns: dict[int, Conn] = {}
        self.ids = itertools.count(1)
        # module -> socket messages from clients / to clients
        self.messages_in: dict[str, int] = {}
        self.messages_out: dict[str, int] = {}
        # Counts upgrades no socket path took (None: no metrics).
        self.metrics = metrics
        # The direct path's tasks (re-opens, restarts, on_close), kept referenced.
        self.tasks: set[asyncio.Task] = set()

    def count(self, module: str) -> int:
        return sum(1 for c in self.conns.values() if c.module == module)

    # ---- the ASGI side ------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        """An upgrade on a non-control path that api/ws_protocol.py did not
        take and Dispatcher.__call__ did not forward to another node: no
        socket path matched it when its headers were read (a socket deployed
        or taken over since then included: the client connects again).
        Refused before the handshake, which uvicorn answers as HTTP 403."""
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        if self.metrics is not None:
            self.metrics.unmatched["no_socket"] = self.metrics.unmatched.get("no_socket", 0) + 1
        await send({"type": "websocket.close", "code": CLOSE_POLICY})

    async def _sender(self, conn: Conn) -> None:
        """Drains the connection's queue into the socket, in order.

        The socket's send returns without suspending while the client's
        socket is writable, so `blocked` is only seen True when the client lags."""
        while True:
            item = await conn.queue.get()
            if item is None:
                return
            kind, payload = item
            conn.blocked = True
            try:
                if kind == "text":
                    await conn.send({"type": "websocket.send", "text": payload})
                elif kind == "bytes":
                    await conn.send({"type": "websocket.send", "bytes": payload})
                else:
                    await conn.send({"type": "websocket.close", "code": payload})
                    return
            except Exception:  # noqa: BLE001 - the client went away mid-send
                return
            finally:
                conn.blocked = False
            self.messages_out[conn.module] = self.messages_out.get(conn.module, 0) + 1

    def _close(self, conn: Conn, code: int, flush: bool = False) -> None:
        """Queue the close; nothing queued after it is sent.

        flush: what the module sent before asking for the close goes out
        first (ws->close). Otherwise the close jumps the queue."""
        if conn.closed:
            return
        conn.closed = True
        if not flush:
            while not conn.queue.empty():
                conn.queue.get_nowait()
        conn.queue.put_nowait(("close", code))

    async def _finish(self, conn: Conn) -> None:
        self.conns.pop(conn.conn_id, None)
        conn.closed = True
        # on_close goes only to the worker that saw this connection's on_open
        # and still serves it; the turn waits out a migration in progress.
        async with conn.turn:
            version = self._version_of(conn)
            if conn.worker_id and version is not None and version.worker_id == conn.worker_id and version.state is _ACTIVE:
                entry = self.host.table.match_socket(conn.path)
                if entry is not None and entry.version is version:
                    await self._request(version, protocol.encode_ws(protocol.F_WS_CLOSE, entry.index, conn.conn_id))
        sender = conn.sender
        if sender is not None and not sender.done():
            conn.queue.put_nowait(None)
            # A close frame still queued goes out before the connection is
            # done with (for at most CLOSE_FLUSH_S).
            done, _ = await asyncio.wait({sender}, timeout=CLOSE_FLUSH_S)
            if not done:
                sender.cancel()

    # ---- the server's own WebSocket protocol (api/ws_protocol.py) -----------

    def open(self, path: str, query_string: bytes, send: Callable, push: Callable[[bytes, bool], bool],
             drained: Callable[[], None]) -> Conn | None:
        """A client whose handshake is being accepted on path: its Conn, with
        on_open on the way. None when no module serves path (nothing sent).

        send is an ASGI-style send (websocket.send / websocket.close) for
        what the sender task writes; push the synchronous write (see Conn)."""
        entry = self.host.table.match_socket(path)
        if entry is None:
            return None
        conn = Conn(next(self.ids), path, entry.version.name, send, asyncio.Queue(), push=push, drained=drained)
        conn.open_data = _open_data(path, query_string)
        self.conns[conn.conn_id] = conn
        conn.sender = asyncio.get_running_loop().create_task(self._sender(conn))
        conn.turn.on_free = lambda: self._pump(conn)
        # Taken now: messages that arrive before on_open is delivered wait for it.
        conn.turn.take_now()
        self._spawn(self._held(conn, protocol.F_WS_OPEN, conn.open_data, False, ATTEMPTS))
        return conn

    def receive(self, conn: Conn, data: bytes, binary: bool) -> None:
        """A whole message from conn's client (text already checked as UTF-8)."""
        self.messages_in[conn.module] = self.messages_in.get(conn.module, 0) + 1
        if conn.closed or conn.left:
            return
        conn.inbox.append((data, binary))
        self._pump(conn)

    def gone(self, conn: Conn) -> None:
        """conn's client left, or the api closed it: on_close goes to the
        worker after the messages that came before."""
        if conn.left:
            return
        conn.left = True
        conn.inbox.append(None)
        self._pump(conn)

    def _pump(self, conn: Conn) -> None:
        """Start conn's next message if the turn is free."""
        inbox = conn.inbox
        turn = conn.turn
        while inbox and turn.take_now():
            item = inbox.popleft()
            if item is None:
                turn.held = False  # taken just now: nobody waits for it
                inbox.clear()
                self._spawn(self._finish(conn))
                break
            if conn.closed:
                turn.held = False
                continue  # the api closed it: dropped
            data, binary = item
            if not self._send_fast(conn, data, binary):
                self._spawn(self._held(conn, protocol.F_WS_MSG, data, binary, ATTEMPTS))
            break
        if not inbox and conn.drained is not None:
            conn.drained()

    def _send_fast(self, conn: Conn, data: bytes, binary: bool) -> bool:
        """Send a message to the worker that saw conn's on_open, settled from
        the read that brings the answer. False, with nothing sent, when the
        async path must take it (re-open, restart, worker gone)."""
        entry = self.host.table.match_socket(conn.path)
        if entry is None:
            return False
        version = entry.version
        worker_id = conn.worker_id
        if version.name != conn.module or version.state is not _ACTIVE or worker_id != version.worker_id:
            return False
        frame = protocol.encode_ws(protocol.F_WS_MSG, entry.index, conn.conn_id, data, binary)

        def settled(_reply: bytes | None, exc: BaseException | None) -> None:
            if exc is None:
                conn.turn.release()
                return
            # Judged now, as _deliver judges it when its request raises.
            in_flight = isinstance(exc, WorkerGone) and version.state is _ACTIVE and version.worker_id == worker_id
            self._spawn(self._recover(conn, version, worker_id, exc, in_flight, data, binary))

        try:
            return version.pool.submit(frame, self.timeout, settled)
        except WorkerGone:
            return False

    async def _held(self, conn: Conn, kind: int, data: bytes, binary: bool, attempts: int) -> None:
        try:
            await self._event_held(conn, kind, data, binary, attempts)
        finally:
            conn.turn.release()

    async def _recover(self, conn: Conn, version: Version, worker_id: int, exc: BaseException, in_flight: bool,
                       data: bytes, binary: bool) -> None:
        try:
            if await self._failed(conn, version, worker_id, exc, in_flight) == RETRY:
                await self._event_held(conn, protocol.F_WS_MSG, data, binary, ATTEMPTS - 1)
        finally:
            conn.turn.release()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- events to the worker --------------------------------------------------

    def _version_of(self, conn: Conn) -> Version | None:
        return self.host.active.get(conn.module)

    async def _request(self, version: Version, frame: bytes) -> bool:
        try:
            await version.pool.request(frame, self.timeout)
            return True
        except (TimeoutError, WorkerGone):
            return False

    async def _serving(self, conn: Conn) -> Entry | None:
        """The socket entry of the version serving conn now, after any restart
        in progress; None (and conn closed) when there is none."""
        entry = self.host.table.match_socket(conn.path)
        if entry is None or entry.version.name != conn.module:
            self._close(conn, CLOSE_GOING_AWAY)
            return None
        version = entry.version
        if version.state is _RESTARTING:
            try:
                await asyncio.wait_for(version.ready.wait(), RESTART_WAIT_S)
            except TimeoutError:
                pass
        if version.state is not _ACTIVE:
            self._close(conn, CLOSE_INTERNAL)
            return None
        return entry

    async def _deliver(self, conn: Conn, version: Version, frame: bytes) -> str:
        """One frame to version's worker: DELIVERED, LOST or RETRY.

        LOST: the worker died while the frame was in flight (it may be what
        killed it, so it is not sent again) or did not answer in time.
        RETRY: the frame never reached the dead worker; a new one is up."""
        worker_id = version.worker_id
        try:
            await version.pool.request(frame, self.timeout)
            return DELIVERED
        except (WorkerGone, TimeoutError) as exc:
            return await self._failed(conn, version, worker_id, exc)

    async def _failed(self, conn: Conn, version: Version, worker_id: int, exc: BaseException,
                      in_flight: bool | None = None) -> str:
        """The outcome of a frame whose delivery raised exc (see _deliver)."""
        if isinstance(exc, WorkerGone):
            # A frame on the wire when the worker dies fails as soon as its data
            # connection drops, before the agent reports the exit (state still
            # active, same worker). Frames still waiting for a connection fail
            # only when the host kills the pool, once it knows (restarting).
            if in_flight is None:
                in_flight = version.state is _ACTIVE and version.worker_id == worker_id
            conn.worker_id = 0
            await self._await_restart(version, worker_id)
            if self.host.active.get(version.name) is version and version.state is not _ACTIVE:
                self._close(conn, CLOSE_INTERNAL)
                return LOST
            return LOST if in_flight else RETRY
        log.warning("socket %d on %s: module %s did not handle an event within %g s; closing it",
                    conn.conn_id, conn.path, version.name, self.timeout)
        self._close(conn, CLOSE_INTERNAL)
        return LOST

    @staticmethod
    async def _await_restart(version: Version, dead_worker: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESTART_WAIT_S
        while loop.time() < deadline:
            if version.worker_id != dead_worker and version.state is _ACTIVE:
                return
            if version.state is _QUARANTINED or version.state in GONE:
                return
            await asyncio.sleep(0.02)

    async def _event_held(self, conn: Conn, kind: int, data: bytes, binary: bool, attempts: int) -> bool:
        """Deliver one event in order, re-opening conn on a new worker first;
        the caller holds conn's turn. False: the connection is closed (the
        close frame is queued)."""
        for _ in range(attempts):
            if conn.closed:
                return False
            entry = await self._serving(conn)
            if entry is None:
                return False
            version = entry.version
            if kind != protocol.F_WS_OPEN and conn.worker_id != version.worker_id:
                conn.worker_id = version.worker_id
                open_frame = protocol.encode_ws(protocol.F_WS_OPEN, entry.index, conn.conn_id, conn.open_data)
                outcome = await self._deliver(conn, version, open_frame)
                if outcome == RETRY:
                    continue
                if outcome == LOST:
                    break
            if kind == protocol.F_WS_OPEN:
                # Before the frame goes out, so sends from on_open are accepted.
                conn.worker_id = version.worker_id
            frame = protocol.encode_ws(kind, entry.index, conn.conn_id, data, binary)
            if await self._deliver(conn, version, frame) != RETRY:
                break
        return not conn.closed

    async def migrate(self, version: Version) -> None:
        """Re-open every connection of version's module on its current worker.

        Connections on a path the module no longer declares are closed 1001."""
        conns = []
        for c in list(self.conns.values()):
            if c.module != version.name or c.closed:
                continue
            entry = self.host.table.match_socket(c.path)
            if entry is None or entry.version.name != c.module:
                self._close(c, CLOSE_GOING_AWAY)
            elif c.worker_id != version.worker_id:
                conns.append(c)

        async def one(conn: Conn) -> None:
            async with conn.turn:
                entry = self.host.table.match_socket(conn.path)
                if conn.closed or entry is None or entry.version is not version or conn.worker_id == version.worker_id:
                    return
                if version.state is not _ACTIVE:
                    return
                conn.worker_id = version.worker_id
                frame = protocol.encode_ws(protocol.F_WS_OPEN, entry.index, conn.conn_id, conn.open_data)
                if not await self._request(version, frame):
                    conn.worker_id = 0

        sem = asyncio.Semaphore(max(1, version.pool.size))

        async def bounded(conn: Conn) -> None:
            async with sem:
                await one(conn)

        await asyncio.gather(*(bounded(c) for c in conns))

    def close_module(self, name: str, code: int = CLOSE_GOING_AWAY) -> None:
        """Close every connection of module name (removed: 1001; quarantined: 1011)."""
        for conn in list(self.conns.values()):
            if conn.module == name:
                self._close(conn, code)

    def close_all(self, code: int = CLOSE_GOING_AWAY) -> None:
        for conn in list(self.conns.values()):
            self._close(conn, code)

    # ---- frames from workers ---------------------------------------------------

    def from_worker(self, worker_id: int, frame: bytes) -> None:
        kind, binary, conn_id, data = protocol.decode_ws_out(frame)
        conn = self.conns.get(conn_id)
        if conn is None or conn.closed or conn.worker_id != worker_id:
            return  # a retired version, or a connection already gone
        if kind == protocol.F_WS_CLOSE_REQ:
            self._close(conn, CLOSE_NORMAL, flush=True)
            return
        pending = conn.queue.qsize()
        if pending >= self.queue_limit and (conn.blocked or pending >= self.queue_limit * BURST_FACTOR):
            log.warning("socket %d on %s is not reading; closing it", conn_id, conn.path)
            self._close(conn, CLOSE_TRY_LATER)
            return
        if pending == 0 and not conn.blocked and conn.push is not None and conn.push(data, binary):
            # Nothing queued or being sent and the socket took it: sent without
            # waking the sender task (a broadcast reaches 1,000 clients in one
            # pass over the events channel's frames).
            self.messages_out[conn.module] = self.messages_out.get(conn.module, 0) + 1
            return
        if binary:
            conn.queue.put_nowait(("bytes", data))
        else:
            conn.queue.put_nowait(("text", data.decode("utf-8", "replace")))
