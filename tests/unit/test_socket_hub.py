"""SocketHub's outbound side without a server: frames from a worker reach the
client in order, whether written at once, queued behind a lagging socket, or
behind a send that suspends; a lagging client is closed with 1013; a
module's close goes out after what it sent before it."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from api.sockets import CLOSE_NORMAL, CLOSE_TRY_LATER, Conn, SocketHub
from runtime import protocol

WORKER = 7


class FakeSocket:
    """Stands in for api/ws_protocol.py ModuleSocket: push() writes at once
    unless writing is paused (flow control), send() (the sender task's)
    waits for the socket to drain and can be made to suspend; both record
    what the client would get."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.got: list[Any] = []
        self.gate: asyncio.Future | None = None

    def push(self, data: bytes, binary: bool) -> bool:
        if not self.writable.is_set():
            return False
        self.got.append(data if binary else data.decode())
        return True

    async def send(self, message: dict) -> None:
        await self.writable.wait()
        if self.gate is not None:
            await self.gate
        if message["type"] == "websocket.close":
            self.got.append(("close", message["code"]))
        else:
            self.got.append(message.get("text", message.get("bytes")))


def ws_send(conn_id: int, data: bytes, binary: bool = False) -> bytes:
    return struct.pack("<BBHQI", protocol.F_WS_SEND, int(binary), 0, conn_id, len(data)) + data + b"\0"


def close_req(conn_id: int) -> bytes:
    return struct.pack("<BBHQ", protocol.F_WS_CLOSE_REQ, 0, 0, conn_id)


def hub_with_conn(queue_limit: int = 4) -> tuple[SocketHub, Conn, FakeSocket]:
    hub = SocketHub(host=None, queue_limit=queue_limit)  # type: ignore[arg-type]
    sock = FakeSocket()
    conn = Conn(1, "/t/ws", "t", sock.send, asyncio.Queue(), worker_id=WORKER, push=sock.push)
    hub.conns[1] = conn
    conn.sender = asyncio.ensure_future(hub._sender(conn))
    return hub, conn, sock


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_frames_to_a_writable_socket_go_out_at_once_in_order() -> None:
    async def go() -> list:
        hub, conn, sock = hub_with_conn()
        for i in range(100):
            hub.from_worker(WORKER, ws_send(1, f"m{i}".encode()))
        hub.from_worker(WORKER, ws_send(1, b"\x00\xff", binary=True))
        sent_synchronously = list(sock.got)
        conn.sender.cancel()  # type: ignore[union-attr]
        return sent_synchronously

    assert [f"m{i}" for i in range(100)] + [b"\x00\xff"] == asyncio.run(go())


def test_frames_queue_behind_a_send_that_suspends() -> None:
    """Once a frame waits for the sender task, later ones queue behind it even
    when the socket takes data again before the sender is done: order holds."""

    async def go() -> list:
        hub, conn, sock = hub_with_conn()
        sock.writable.clear()
        hub.from_worker(WORKER, ws_send(1, b"first"))  # queued: the socket is full
        sock.gate = asyncio.get_running_loop().create_future()
        sock.writable.set()
        await settle()  # the sender is inside send(), held at the gate
        hub.from_worker(WORKER, ws_send(1, b"second"))
        hub.from_worker(WORKER, ws_send(1, b"third"))
        assert [] == sock.got
        sock.gate.set_result(None)
        sock.gate = None
        await settle()
        conn.sender.cancel()  # type: ignore[union-attr]
        return sock.got

    assert ["first", "second", "third"] == asyncio.run(go())


def test_lagging_client_is_closed_1013_after_queue_limit() -> None:
    """While the socket does not drain, queue_limit frames may wait; the next
    one drops what is pending and closes with 1013; later frames are ignored."""

    async def go() -> tuple[list, bool]:
        hub, conn, sock = hub_with_conn(queue_limit=4)
        hub.from_worker(WORKER, ws_send(1, b"before"))
        sock.writable.clear()  # the client stops reading
        for i in range(10):
            hub.from_worker(WORKER, ws_send(1, f"q{i}".encode()))
            await settle()
        sock.writable.set()
        await settle()
        return sock.got, conn.closed

    got, closed = asyncio.run(go())
    assert ["before", "q0", ("close", CLOSE_TRY_LATER)] == got
    assert closed


def test_module_close_goes_out_after_what_it_sent() -> None:
    async def go() -> list:
        hub, conn, sock = hub_with_conn()
        sock.writable.clear()
        hub.from_worker(WORKER, ws_send(1, b"a"))
        hub.from_worker(WORKER, ws_send(1, b"b"))
        hub.from_worker(WORKER, close_req(1))
        hub.from_worker(WORKER, ws_send(1, b"after close"))
        sock.writable.set()
        await settle()
        return sock.got

    assert ["a", "b", ("close", CLOSE_NORMAL)] == asyncio.run(go())


def test_frames_from_another_worker_are_ignored() -> None:
    """After a swap or restart the old worker's sends and closes do nothing."""

    async def go() -> tuple[list, bool]:
        hub, conn, sock = hub_with_conn()
        hub.from_worker(WORKER + 1, ws_send(1, b"stale"))
        hub.from_worker(WORKER + 1, close_req(1))
        hub.from_worker(WORKER, ws_send(1, b"current"))
        await settle()
        conn.sender.cancel()  # type: ignore[union-attr]
        return sock.got, conn.closed

    assert (["current"], False) == asyncio.run(go())
