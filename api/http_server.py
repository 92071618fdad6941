"""The server's HTTP/1.1 protocol: uvicorn's httptools protocol with header
limits and client timeouts, and module routes answered without ASGI.

A request for a module route never becomes an ASGI scope, a task running an
ASGI app, or two send() calls: the protocol hands method, path, headers and
body to Dispatcher.start, which sends them to the worker and writes the
answer in one write from the read that brings it (Dispatcher.serve, in a
task, for the rare cases start() leaves). Everything else (control plane,
WebSocket upgrades, "/" when no module claims it) takes uvicorn's own path
unchanged. This leans on uvicorn's per-request internals, hence the pinned
minor version in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from typing import Any

from api.errors import ApiError, BadRequest, HeadersTooLarge, InternalError, PayloadTooLarge, RequestTimeout, error_body

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # pragma: no cover - another uvicorn layout: http_protocol() falls back to "httptools"
    httptools = None
    STATUS_LINE = {}
    HttpToolsProtocol = object
from api.dispatch import json_reply
from api.settings import BODY_TIMEOUT_S, HEADER_TIMEOUT_S
from api.ws_protocol import take_upgrade

log = logging.getLogger("cweb.api")

# Request-line + headers of one request (bytes), and header count: past
# either the request is refused 431. httptools itself has no such limit.
MAX_HEADER_BYTES = 64 << 10
MAX_HEADERS = 256
# Lingering close: after answering a request whose body is not wanted (413),
# the server stops parsing, shuts down its sending side once the answer is
# flushed, and reads and discards what the client still sends for at most
# this long and this much, then closes. Closing at once would make the kernel
# answer the unread bytes with a reset, and a client still sending (httpx,
# requests, urllib) would report "connection reset" instead of the 413.
LINGER_S = 10.0
LINGER_BYTES = 256 << 20
# Responses larger than this go out as head + body (no copy into one buffer).
_JOIN_LIMIT = 64 << 10
# A module request whose Content-Length is at least this has the part of its
# body that httptools has not seen by the end of the headers' read taken
# straight from the reads, as views: httptools hands every body piece over
# as a new bytes object, a copy of the whole body.
RAW_BODY_FROM = 64 << 10
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Module answers carry c-web-modules' reason phrases (its http_errors[]) where
# Python's differ ("Request Entity Too Large", "Request-URI Too Long").
MODULE_REASONS = {413: b"Payload Too Large", 414: b"URI Too Long"}


class _NoEvent:
    """uvicorn's protocol sets cycle.message_event on body and disconnect;
    a module request has no reader waiting on it."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class _Refused(Exception):
    pass

class _LingeringTransport:
    """The transport as an ASGI request's cycle sees it: close() while
    the request body is still arriving lingers instead (a control-plane
    413 such as an oversized chunked upload to /mgnt)."""

    def __init__(self, proto: Any, transport: asyncio.Transport) -> None:
        self._proto = proto
        self._transport = transport
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._proto.close_or_linger()

class _Edge:
    """What the connections of one server share: its client timeouts, the
    live connections for the deadline sweep, and the rendered status lines."""

    def __init__(self, header_timeout: float, body_timeout: float) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        # Deadlines are checked by one sweep a second over every connection: a timer
        # per request (armed and cancelled twice per request) costs more on the hot path.
        self.live: set = set()
        self.sweeping: list[asyncio.TimerHandle] = []
        # Status line + uvicorn's default headers (the date, renewed every second
        # as a new list) per status, for the current list.
        self.prefixes: dict[int, bytes] = {}
        self.prefixes_for: Any = None

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sweeping.clear()
        now = loop.time()
        for proto in list(self.live):
            if proto._deadline is not None and now >= proto._deadline:
                proto._deadline = None
                proto._expire(*proto._why)
        if self.live:
            self.sweeping.append(loop.call_later(1.0, self.sweep, loop))

    def status_prefix(self, status: int, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        if self.prefixes_for is not default_headers:
            self.prefixes.clear()
            self.prefixes_for = default_headers
        prefix = self.prefixes.get(status)
        if prefix is None:
            line = b"HTTP/1.1 %d %b\r\n" % (status, MODULE_REASONS[status]) if status in MODULE_REASONS else STATUS_LINE[status]
            prefix = self.prefixes[status] = line + b"".join(b"%b: %b\r\n" % kv for kv in default_headers)
        return prefix


class ModuleRequest:
    """One module-route request on a connection. It stands in for uvicorn's
    RequestResponseCycle where the protocol touches one (response_complete,
    disconnected, keep_alive, message_event), so pipelining, keep-alive and
    shutdown keep working unchanged."""

    __slots__ = ("proto", "method", "path", "query", "headers", "keep_alive", "body", "size", "more_body",
                 "response_complete", "disconnected", "started", "too_large", "expect_continue", "message_event")

    def __init__(self, proto: Any, method: str, path: str, query: bytes, keep_alive: bool) -> None:
        self.proto = proto
        self.method = method
        self.path = path
        self.query = query
        self.headers = proto.headers
        self.keep_alive = keep_alive
        self.body: list[bytes] = []
        self.size = 0
        self.more_body = True
        self.response_complete = False
        self.disconnected = False
        self.started = False
        self.too_large = False
        self.expect_continue = proto.expect_100_continue
        self.message_event = _NO_EVENT

    def start(self) -> None:
        """Its turn on the connection has come (at once, or after the
        pipelined requests before it)."""
        self.started = True
        if self.too_large:
            self.refuse_size()
        elif not self.more_body:
            self.go()
        elif self.expect_continue:
            self.proto.transport.write(_CONTINUE)

    def add(self, chunk: bytes) -> None:
        if self.too_large or self.response_complete:
            return
        self.size += len(chunk)
        if self.size > self.proto.dispatcher.max_body:
            self.too_large = True
            self.body = []
            if self.started:
                self.refuse_size()
            return
        self.body.append(chunk)

    def refuse_size(self) -> None:
        # The rest of the body is not worth reading: answer, then a
        # lingering close (write() closes through close_or_linger).
        self.keep_alive = False
        too_large = PayloadTooLarge(f"request body exceeds the limit of {self.proto.dispatcher.max_body} bytes", code="body_too_large")
        self.write(*json_reply(*error_body(too_large), self.proto.dispatcher.cors_headers(self.headers)))

    def go(self) -> None:
        """The whole request is in and it is its turn."""
        if len(self.body) == 1 and type(self.body[0]) is bytes:
            self.body = self.body[0]  # type: ignore[assignment]
        if not self.proto.dispatcher.start(self):
            self.run()

    def run(self) -> None:
        task = self.proto.loop.create_task(self.answer())
        tasks = self.proto.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def answer(self) -> None:
        try:
            status, headers, out = await self.proto.dispatcher.serve(self.method, self.path, self.query, self.headers, self.body)
        except Exception:  # a bug of ours: still an answer, never a hung connection
            log.exception("module request %s %s failed", self.method, self.path)
            status, headers, out = json_reply(*error_body(InternalError("the server failed to handle the request")))
        self.write(status, headers, out)

    def write(self, status: int, headers: list[tuple[bytes, bytes]] | bytes, body: bytes) -> None:
        """Send the response in one write; headers may come rendered."""
        if self.response_complete:
            return
        self.response_complete = True
        proto = self.proto
        if self.disconnected:
            return
        head = [proto.edge.status_prefix(status, proto.server_state.default_headers)]
        if type(headers) is bytes:
            head.append(headers)
        else:
            for name, value in headers:
                head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n" if self.keep_alive else b"connection: close\r\n\r\n")
        transport = proto.transport
        if self.method == "HEAD" or not body:
            transport.write(b"".join(head))
        elif len(body) > _JOIN_LIMIT:
            transport.writelines((b"".join(head), body))
        else:
            head.append(body)
            transport.write(b"".join(head))
        if not self.keep_alive:
            proto.close_or_linger()
        proto.on_response_complete()

class LimitedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's httptools protocol with header limits, client timeouts, a
    lingering close, and module requests answered without ASGI. Bound to
    one server by http_protocol() (the class attributes edge, dispatcher)."""

    edge: _Edge
    dispatcher: Any = None
    _refusal: ApiError | None = None
    _deadline: float | None = None
    _why: tuple[str, str] = ("", "")
    _header_bytes = 0
    _header_count = 0
    _in_request = False
    _lingering = False
    _linger_left = 0
    # Body bytes of the current module request still to be taken past the parser.
    _raw_left = 0

    def close_or_linger(self) -> None:
        """Close after an answer: at once if the request was read whole,
        else a lingering close (LINGER_S, LINGER_BYTES)."""
        transport = self.transport
        if not self._in_request or transport.is_closing():
            transport.close()
            return
        if self._lingering:
            return
        self._lingering = True
        self._linger_left = LINGER_BYTES
        self.flow.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()  # after the queued answer is flushed
        self._deadline = self.loop.time() + LINGER_S
        self._why = ("linger", "")

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self.transport.close()
            return
        if self._raw_left:
            self._raw_body(data)
            return
        super().data_received(data)

    def _raw_body(self, data: bytes) -> None:
        """The next piece of a large module request body, taken as is (a
        view of the read) instead of through httptools. Its parser was left
        expecting the body it never saw: the next request gets a new one."""
        n = self._raw_left
        cycle = self.cycle
        if len(data) <= n:
            self._raw_left = n - len(data)
            cycle.add(data)
            if self._raw_left:
                return
            rest = b""
        else:
            self._raw_left = 0
            cycle.add(memoryview(data)[:n])
            rest = data[n:]
        self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's
        except AttributeError:  # pragma: no cover - httptools < 0.6.3
            pass
        self.on_message_complete()
        if rest and not self._lingering and not self.transport.is_closing():
            self.data_received(rest)

    def eof_received(self) -> bool | None:
        if self._lingering:
            self.transport.close()  # the client has sent everything
        return None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        edge = self.edge
        edge.live.add(self)
        if not edge.sweeping:
            edge.sweeping.append(self.loop.call_later(1.0, edge.sweep, self.loop))
        self._arm(edge.header_timeout, "request_header_timeout", "the request line and headers took too long to arrive")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.edge.live.discard(self)
        super().connection_lost(exc)

    def _arm(self, delay: float, code: str, message: str) -> None:
        self._deadline = self.loop.time() + delay
        self._why = (code, message)

    def _disarm(self) -> None:
        self._deadline = None

    def _expire(self, code: str, message: str) -> None:
        if self.transport.is_closing():
            return
        if self._lingering:
            self.transport.close()
        elif self._in_request:
            self._send_error_and_close(RequestTimeout(message, code=code))
        else:  # idle keep-alive, or a connection that never sent a byte: just close it
            self.transport.close()

    def _send_error_and_close(self, error: ApiError) -> None:
        # Below the dispatcher (no request yet): the head is written here.
        status, body = error_body(error)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _count(self, n: int, headers: int = 0) -> None:
        self._header_bytes += n
        self._header_count += headers
        if self._header_bytes > MAX_HEADER_BYTES or self._header_count > MAX_HEADERS:
            self._refusal = HeadersTooLarge(
                f"request line and headers are limited to {MAX_HEADER_BYTES} bytes and {MAX_HEADERS} headers",
            )
            raise _Refused()

    def on_message_begin(self) -> None:
        # uvicorn builds the ASGI scope here; module requests never need one,
        # so it is built in _asgi_scope only for requests that go through ASGI.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._in_request = True
        self._header_bytes = self._header_count = 0
        if self._deadline is None or self._why[0] == "keep_alive":
            self._arm(self.edge.header_timeout, "request_header_timeout", "the request line and headers took too long to arrive")

    def _asgi_scope(self) -> None:
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 1)
        # uvicorn's, inlined (once per header of every request).
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._arm(self.edge.body_timeout, "request_body_timeout", "the request body took too long to arrive")
        parser = self.parser
        dispatcher = self.dispatcher
        if dispatcher is not None and not parser.should_upgrade():
            url = httptools.parse_url(self.url)
            path = url.path.decode("ascii")
            if "%" in path:
                path = urllib.parse.unquote(path)
            method = parser.get_method().decode("ascii")
            if dispatcher.answers(method, path):
                self._module_request(method, path, url.query or b"")
                return
        self._asgi_scope()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and not parser.should_upgrade():
            # Created just now; its task has not run yet.
            cycle.transport = _LingeringTransport(self, self.transport)

    def _module_request(self, method: str, path: str, query: bytes) -> None:
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        req = ModuleRequest(self, method, path, query, keep_alive)
        length = None
        chunked = False
        for name, value in self.headers:
            if name == b"content-length" and length is None:
                length = int(value) if value.isdigit() else -1
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and length > self.dispatcher.max_body:
            req.too_large = True
        elif length is not None and length >= RAW_BODY_FROM and not chunked:
            # on_body takes off what httptools parses of it from this read.
            self._raw_left = length
        previous, self.cycle = self.cycle, req
        if previous is None or previous.response_complete:
            req.start()
        else:  # pipelined: its turn comes in on_response_complete
            self.flow.pause_reading()
            self.pipeline.appendleft((req, None))

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if type(cycle) is ModuleRequest:
            cycle.start()
        else:
            super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is ModuleRequest:
            if self._raw_left:
                self._raw_left -= len(body)
            cycle.add(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_request = False
        self._raw_left = 0
        self._disarm()
        cycle = self.cycle
        if type(cycle) is ModuleRequest:
            cycle.more_body = False
            if cycle.started and not cycle.response_complete:
                cycle.go()
        else:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timeout on the sweep instead of a timer.
        self.server_state.total_requests += 1
        if self._lingering or self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self._in_request:
            self._arm(self.timeout_keep_alive, "keep_alive", "")

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        self.edge.live.discard(self)  # the connection is another protocol's from here on
        if self.dispatcher is None or not take_upgrade(self, self.dispatcher):  # module sockets: api/ws_protocol.py
            super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        if self._refusal is not None:
            self._send_error_and_close(self._refusal)
        else:
            self._send_error_and_close(BadRequest(
                "malformed HTTP request (invalid syntax, bad chunking, or conflicting Content-Length/Transfer-Encoding)",
                code="bad_http",
            ))


def http_protocol(dispatcher: Any = None, header_timeout: float = HEADER_TIMEOUT_S,
                  body_timeout: float = BODY_TIMEOUT_S) -> object:
    """The protocol class for uvicorn's `http=`, bound to this server's
    dispatcher and timeouts; plain "httptools" if this uvicorn's internals
    are not the expected ones."""
    if httptools is None:  # pragma: no cover - another uvicorn layout
        return "httptools"
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,),
                {"edge": _Edge(header_timeout, body_timeout), "dispatcher": dispatcher})
