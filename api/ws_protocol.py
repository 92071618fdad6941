"""Module WebSockets on the server's own protocol: the handshake and every
frame are the `websockets` library's sans-I/O ServerProtocol; this file only
moves bytes between it, the transport and the SocketHub.

The HTTP protocol (api/http_server.py) hands over an upgrade whose path a
module's socket serves (`take_upgrade`); every other upgrade (the control
plane's /jobs/ws, unknown paths) stays on uvicorn's WebSocket protocol and
ASGI. On this path a client's message reaches the hub by a direct call from
the read that completes it, and a worker's frame is written by a direct call
from the read of the worker's events channel: no ASGI messages, queues or
tasks in between.

What the library does: handshake validation and the 101 (or 4xx) answer,
framing, masking rules (1002), close codes and the closing handshake,
ping/pong answers, the size limit (1009), permessage-deflate when the client
offers it (uvicorn's settings). What this file adds: reassembling fragments
into one message, UTF-8 validation of text messages (1007), keepalive pings,
flow control both ways, and the close frame's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.parse
from typing import TYPE_CHECKING, Any

import httptools
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from api.dispatch import _is_control as is_control
from api.modules.version import VersionState

_FORWARDED = VersionState.FORWARDED  # bound once: an Enum member lookup costs ~0.3 us

if TYPE_CHECKING:
    from api.sockets import Conn, SocketHub

# The websockets library logs every open and close at INFO; uvicorn's error
# logger is what its own WebSocket protocol gives the library too.
_LOG = logging.getLogger("uvicorn.error")
# After the server's close frame, how long the client has to answer it.
CLOSE_TIMEOUT_S = 10.0
CLOSE_SERVICE_RESTART = 1012
CLOSE_INVALID_DATA = 1007
CLOSE_INTERNAL = 1011

_TEXT, _BINARY, _CONT, _PING, _PONG, _CLOSE = (
    Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PING, Opcode.PONG, Opcode.CLOSE)
_OPEN = State.OPEN


def _utf8(data: bytes) -> bytes:
    """Module text that is not UTF-8 goes out with U+FFFD, as on the ASGI path."""
    return data if data.isascii() else data.decode("utf-8", "replace").encode()


# The last payload framed for connections without extensions, its kind and
# its frame: server frames carry no mask, so a broadcast's 1,000 copies are
# the same bytes, serialized by the library once.
_last_framed: list = [None, False, b""]


def _framed(data: bytes, binary: bool) -> bytes:
    last = _last_framed
    if last[1] == binary and last[0] == data:
        return last[2]
    frame = Frame(_BINARY if binary else _TEXT, data if binary else _utf8(data)).serialize(mask=False)
    last[0], last[1], last[2] = data, binary, frame
    return frame


def take_upgrade(http: Any, dispatcher: Any) -> bool:
    """Called by the HTTP protocol for a WebSocket upgrade request: True if a
    module socket took the connection over (handshake answered here).

    http is uvicorn's httptools protocol (transport, url, headers, config,
    server_state, parser, loop) right after the request's headers."""
    hub = dispatcher.ws_handler
    if hub is None or http.parser.get_method() != b"GET":
        return False
    path = httptools.parse_url(http.url).path.decode("latin-1")
    if "%" in path:
        path = urllib.parse.unquote(path)
    entry = None if is_control(path) else hub.host.table.match_socket(path)
    if entry is None or entry.version.state is _FORWARDED:  # forwarded through ASGI (api/cluster)
        return False
    sock = ModuleSocket(hub, http.config, http.server_state, http.loop)
    http.connections.discard(http)
    http.transport.set_protocol(sock)
    sock.connection_made(http.transport)
    sock.handshake(path, http.url, http.headers)
    return True


class ModuleSocket(asyncio.Protocol):
    """One client's WebSocket to a module socket path."""

    def __init__(self, hub: SocketHub, config: Any, server_state: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.loop = loop
        self.server_state = server_state
        extensions = []
        if config.ws_per_message_deflate:
            extensions = [ServerPerMessageDeflateFactory(
                server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5})]
        self.ws = ServerProtocol(extensions=extensions, max_size=config.ws_max_size, logger=_LOG)
        self.ping_interval = config.ws_ping_interval
        self.ping_timeout = config.ws_ping_timeout
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.conn: Conn | None = None
        # The message being reassembled from fragments, and its kind.
        self.parts: list[bytes] = []
        self.binary = False
        self.read_paused = False
        self.write_paused = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.closing = False  # the server's close frame is sent (or the socket failed)
        self.timer: asyncio.TimerHandle | None = None  # ping, pong deadline or close deadline
        self.ping_payload: bytes | None = None

    # ---- the transport's side ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)

    def handshake(self, path: str, target: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        """Answer the upgrade request (already parsed by httptools): the
        library reads it again, from the same bytes, so that its parser
        starts on the frames right after it."""
        ws = self.ws
        head = [b"GET ", target, b" HTTP/1.1\r\n"]
        for name, value in raw_headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        ws.receive_data(b"".join(head))
        requests = [e for e in ws.events_received() if isinstance(e, Request)]
        if not requests:  # the library refused to parse it; it queued its own answer
            self.flush()
            self.transport.close()
            return
        response = ws.accept(requests[0])
        for name, value in self.server_state.default_headers:  # X-Cweb-Node, as on every answer
            if name != b"date":
                response.headers[name.decode("latin-1")] = value.decode("latin-1")
        if response.status_code == 101:
            query = urllib.parse.urlsplit(target).query
            self.conn = self.hub.open(path, query, self.send, self.push, self.drained)
            if self.conn is None:  # the module went away since the headers were read
                response = ws.reject(403, "no socket on this path\n")  # as for any unknown path
        ws.send_response(response)
        self.flush()
        if self.conn is not None and self.ping_interval:
            self.timer = self.loop.call_later(self.ping_interval, self.ping)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for frame in ws.events_received():
            op = frame.opcode
            if op is _TEXT or op is _BINARY:
                self.binary = op is _BINARY
                if frame.fin:
                    self.message(frame.data)
                else:
                    self.parts = [frame.data]
            elif op is _CONT:
                self.parts.append(frame.data)
                if frame.fin:
                    data, self.parts = b"".join(self.parts), []
                    self.message(data)
            elif op is _PONG:
                if self.ping_payload is not None and frame.data == self.ping_payload:
                    self.ping_payload = None
                    self.rearm(self.ping_interval, self.ping)
            # PING is answered by the library, CLOSE echoed by it: both below.
        if ws.writes:
            self.flush()
        conn = self.conn
        if conn is not None and conn.inbox and not self.read_paused and not self.transport.is_closing():
            # The hub takes one message at a time: read on once it has them all.
            self.read_paused = True
            self.transport.pause_reading()

    def message(self, data: bytes) -> None:
        if self.closing or self.conn is None:
            return
        if not self.binary and not data.isascii():
            try:
                data.decode()
            except UnicodeDecodeError:
                self.closing = True
                self.ws.fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                return  # fail() queued the close frame and the end of the stream
        self.hub.receive(self.conn, data, self.binary)

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.closing = True
        self.writable.set()  # a sender waiting for the socket to drain sees it gone
        self.left()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.writable.clear()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.writable.set()

    def shutdown(self) -> None:
        """uvicorn's server shutdown: 1012 to a client still open."""
        if self.ws.state is _OPEN:
            self.ws.send_close(CLOSE_SERVICE_RESTART)
            self.flush()
        self.transport.close()
        self.left()

    def flush(self) -> None:
        """Write what the library has to send; its end-of-stream marker (b"")
        means the connection is done: closed once the buffer is written."""
        out = self.ws.data_to_send()
        if not out:
            return
        transport = self.transport
        if out[-1] == b"":
            out.pop()
            if out:
                transport.write(b"".join(out))
            transport.close()
            self.closing = True
            self.left()
        elif len(out) == 1:
            transport.write(out[0])
        else:
            transport.write(b"".join(out))

    def left(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.hub.gone(conn)

    # ---- the hub's side ----------------------------------------------------------

    def push(self, data: bytes, binary: bool) -> bool:
        """A worker's frame, written now. False when the socket does not take
        data (the hub queues it for send); True for a client already gone
        (dropped)."""
        if self.write_paused:
            return False
        ws = self.ws
        if ws.state is not _OPEN or self.closing:
            return True
        if ws.extensions:  # compressed: the connection's own context frames it
            if binary:
                ws.send_binary(data)
            else:
                ws.send_text(_utf8(data))
            out = ws.data_to_send()
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        else:
            self.transport.write(_framed(data, binary))
        return True

    async def send(self, message: dict) -> None:
        """What the hub's sender task writes: queued frames and closes."""
        if self.write_paused:
            await self.writable.wait()
        if self.transport.is_closing() or self.ws.state is not _OPEN:
            raise ConnectionError("the client is gone")
        try:
            if message["type"] == "websocket.send":
                text = message.get("text")
                if text is not None:
                    self.ws.send_text(text.encode())
                else:
                    self.ws.send_binary(message["bytes"])
            else:
                self.close(message.get("code", 1000))
                return
        except InvalidState:
            raise ConnectionError("the client is gone") from None
        self.flush()

    def close(self, code: int) -> None:
        """The server's close frame; the client has CLOSE_TIMEOUT_S to answer."""
        self.ws.send_close(code)
        self.closing = True
        self.ping_payload = None  # a late pong must not re-arm the ping over the close deadline
        self.flush()
        if not self.transport.is_closing():
            self.rearm(CLOSE_TIMEOUT_S, self.transport.close)
            if self.read_paused:  # the client's close frame must be read
                self.read_paused = False
                self.transport.resume_reading()
        self.left()

    def drained(self) -> None:
        if self.read_paused and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()

    # ---- keepalive -----------------------------------------------------------------

    def rearm(self, delay: float, callback: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, callback)

    def ping(self) -> None:
        self.timer = None
        if self.closing or self.ws.state is not _OPEN:
            return
        self.ping_payload = os.urandom(4)
        self.ws.send_ping(self.ping_payload)
        self.flush()
        self.timer = self.loop.call_later(self.ping_timeout or self.ping_interval, self.ping_timed_out)

    def ping_timed_out(self) -> None:
        self.timer = None
        if self.closing or self.ws.state is not _OPEN:
            return
        self.ws.fail(CLOSE_INTERNAL, "keepalive ping timeout")
        self.flush()
