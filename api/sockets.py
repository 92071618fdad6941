"""Module WebSockets: the api holds every client socket; module code sees
on_open / on_message / on_close in the worker of the module's active version.

A connection remembers which worker has seen its on_open. Whenever the
module's active worker changes (hot swap, crash restart), every connection
is re-opened on the new worker before its next message, and frames the old
worker still sends for it are dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from api.runtime_client import WorkerGone
from runtime import protocol

if TYPE_CHECKING:
    from api.deploy import ModuleHost, Version

log = logging.getLogger("cweb.api")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013


@dataclass(eq=False)
class Conn:
    conn_id: int
    path: str
    module: str
    send: Callable
    queue: asyncio.Queue
    worker_id: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    sender: asyncio.Task | None = None


class SocketHub:
    def __init__(self, host: "ModuleHost", queue_limit: int = 256, timeout: float = 30.0) -> None:
        self.host = host
        self.queue_limit = queue_limit
        self.timeout = timeout
        self.conns: dict[int, Conn] = {}
        self.ids = itertools.count(1)
        self.messages_in = 0
        self.messages_out = 0

    def count(self, module: str) -> int:
        return sum(1 for c in self.conns.values() if c.module == module)

    # ---- the ASGI side ------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        path = scope["path"]
        entry = self.host.table.match_socket(path)
        if entry is None:
            # Before accept, a close is answered as HTTP 403.
            await send({"type": "websocket.close", "code": CLOSE_POLICY})
            return
        await send({"type": "websocket.accept"})
        conn = Conn(next(self.ids), path, entry.version.name, send, asyncio.Queue(self.queue_limit))
        self.conns[conn.conn_id] = conn
        conn.sender = asyncio.create_task(self._sender(conn))
        try:
            if await self._event(conn, protocol.F_WS_OPEN, path.encode()):
                while True:
                    msg = await receive()
                    kind = msg["type"]
                    if kind == "websocket.receive":
                        self.messages_in += 1
                        text = msg.get("text")
                        if text is not None:
                            ok = await self._event(conn, protocol.F_WS_MSG, text.encode())
                        else:
                            ok = await self._event(conn, protocol.F_WS_MSG, msg.get("bytes") or b"", binary=True)
                        if not ok:
                            break
                    elif kind == "websocket.disconnect":
                        break
        finally:
            await self._finish(conn)

    async def _sender(self, conn: Conn) -> None:
        """Drains the connection's bounded queue into the socket, in order."""
        while True:
            item = await conn.queue.get()
            if item is None:
                return
            kind, payload = item
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
            self.messages_out += 1

    def _close(self, conn: Conn, code: int) -> None:
        if conn.closed:
            return
        conn.closed = True
        # A close jumps the queue: drop what is pending, then close.
        while not conn.queue.empty():
            conn.queue.get_nowait()
        conn.queue.put_nowait(("close", code))

    async def _finish(self, conn: Conn) -> None:
        self.conns.pop(conn.conn_id, None)
        conn.closed = True
        if conn.worker_id:
            version = self._version_of(conn)
            if version is not None and version.worker_id == conn.worker_id:
                entry = self.host.table.match_socket(conn.path)
                if entry is not None:
                    async with conn.lock:
                        await self._request(version, protocol.encode_ws(protocol.F_WS_CLOSE, entry.index, conn.conn_id))
        if conn.sender is not None:
            if conn.queue.full():
                conn.sender.cancel()
            else:
                conn.queue.put_nowait(None)

    # ---- events to the worker --------------------------------------------------

    def _version_of(self, conn: Conn) -> "Version | None":
        return self.host.active.get(conn.module)

    async def _request(self, version: "Version", frame: bytes) -> bool:
        try:
            await version.pool.request(frame, self.timeout)
            return True
        except (WorkerGone, asyncio.TimeoutError):
            return False

    async def _event(self, conn: Conn, kind: int, data: bytes, binary: bool = False) -> bool:
        """Deliver one event in order; re-open on a new worker first. False: give up."""
        async with conn.lock:
            for _ in range(3):
                entry = self.host.table.match_socket(conn.path)
                if entry is None or entry.version.name != conn.module:
                    self._close(conn, CLOSE_GOING_AWAY)
                    return False
                version = entry.version
                if version.state == "restarting":
                    try:
                        await asyncio.wait_for(version.ready.wait(), 10)
                    except asyncio.TimeoutError:
                        pass
                if version.state != "active":
                    self._close(conn, CLOSE_INTERNAL)
                    return False
                worker_id = version.worker_id
                if conn.worker_id != worker_id and kind != protocol.F_WS_OPEN:
                    conn.worker_id = worker_id
                    if not await self._request(version, protocol.encode_ws(protocol.F_WS_OPEN, entry.index, conn.conn_id, conn.path.encode())):
                        continue
                if kind == protocol.F_WS_OPEN:
                    conn.worker_id = worker_id
                if await self._request(version, protocol.encode_ws(kind, entry.index, conn.conn_id, data, binary)):
                    return True
                # The worker died under us: wait for its restart and retry once more.
                await asyncio.sleep(0.05)
            self._close(conn, CLOSE_INTERNAL)
            return False

    async def migrate(self, version: "Version") -> None:
        """Re-open every connection of version's module on its current worker."""
        conns = [c for c in self.conns.values() if c.module == version.name and c.worker_id != version.worker_id]

        async def one(conn: Conn) -> None:
            async with conn.lock:
                entry = self.host.table.match_socket(conn.path)
                if conn.closed or entry is None or entry.version is not version or conn.worker_id == version.worker_id:
                    return
                conn.worker_id = version.worker_id
                await self._request(version, protocol.encode_ws(protocol.F_WS_OPEN, entry.index, conn.conn_id, conn.path.encode()))

        sem = asyncio.Semaphore(max(1, version.pool.size))

        async def bounded(conn: Conn) -> None:
            async with sem:
                await one(conn)

        await asyncio.gather(*(bounded(c) for c in conns))

    def close_module(self, name: str) -> None:
        for conn in list(self.conns.values()):
            if conn.module == name:
                self._close(conn, CLOSE_GOING_AWAY)

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
            self._close(conn, CLOSE_NORMAL)
            return
        item = ("bytes", data) if binary else ("text", data.decode("utf-8", "replace"))
        try:
            conn.queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("socket %d on %s is not reading; closing it", conn_id, conn.path)
            self._close(conn, CLOSE_TRY_LATER)
