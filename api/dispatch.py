"""The ASGI fast path: module routes go straight from the ASGI scope to a
worker frame and back, with no FastAPI, Starlette request objects or JSON on
the way. Anything under a reserved prefix goes to the control-plane app.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from api import routing
from api.cors import ACAO, Cors
from api.errors import (
    ApiError,
    BadGateway,
    BadRequest,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    error_body,
)
from api.jobs.routes import submit_asgi
from api.modules.host import ModuleHost
from api.modules.version import GONE, VersionState
from runtime import protocol
from runtime.client import WorkerGone

if TYPE_CHECKING:
    from api.auth import Guard
    from api.jobs.service import JobService

log = logging.getLogger("cweb.api")

# Bound once: reading a member off an Enum class costs ~0.3 us on Python 3.11.
_ACTIVE, _RESTARTING, _QUARANTINED = VersionState.ACTIVE, VersionState.RESTARTING, VersionState.QUARANTINED
_FORWARDED = VersionState.FORWARDED

# First path segments owned by the control plane ("/jobs/x" -> "jobs").
_CONTROL = frozenset(p.lstrip("/") for p in routing.RESERVED_PREFIXES) | {"favicon.ico"}


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for k, v in headers:
        if (k == b"content-length" and v != b"0") or k == b"transfer-encoding":
            return True
    return False


def _is_control(path: str) -> bool:
    return path[1:].partition("/")[0] in _CONTROL


# Distinct response header sets remembered in their cleaned form.
_HEAD_CACHE_MAX = 1024
_DEFAULT_TYPE = (b"content-type", b"text/html; charset=utf-8")
_JSON_TYPE = (b"content-type", b"application/json")
_METHOD_CODES = protocol.METHOD_CODES
_SKIP_HEADERS = {b"content-length", b"transfer-encoding", b"connection"}
_CLOSE = (b"connection", b"close")
# A module's header that would break the response framing is dropped (the
# same characters uvicorn refuses).
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


def json_reply(status: int, body: bytes, extra: list | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"content-length", str(len(body)).encode()), _JSON_TYPE]
    if extra:
        headers.extend(extra)
    return status, headers, body


async def send_json(send: Callable, status: int, body: bytes, extra: list | None = None) -> None:
    status, headers, body = json_reply(status, body, extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def refuse_websocket(scope: dict, receive: Callable, send: Callable, status: int, body: bytes, extra: list | None = None) -> None:
    """Refuse a handshake with the JSON answer a plain request would get, where
    the server can send one; else close before accepting (HTTP 403)."""
    await receive()  # websocket.connect
    if "websocket.http.response" in (scope.get("extensions") or {}):
        status, headers, body = json_reply(status, body, extra)
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


# Form bodies up to this size are parsed on the event loop (well under a
# millisecond); larger ones in a thread, so percent-decoding megabytes never
# holds the loop (8 MB of %XX takes ~1 s in Python).
INLINE_FORM_BYTES = 64 << 10
# Large forms parsed at once; more wait their turn (a flood costs threads no more).
FORM_THREADS = 2
_URLENCODED = b"application/x-www-form-urlencoded"
_MULTIPART = b"multipart/form-data"


def form_type(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The Content-Type of a url-encoded or multipart body, else None."""
    for k, v in headers:
        if k == b"content-type":
            return v if v.startswith(_URLENCODED) or v.startswith(_MULTIPART) else None
    return None


def form_fields(ctype: bytes, body: bytes, max_fields: int) -> list[tuple[bytes, bytes]]:
    """Parsed urlencoded or multipart form fields, for req->data.

    The field count is checked before any parsing (one C-speed count), so a
    body of two million fields costs microseconds to refuse: PayloadTooLarge
    (413 too_many_form_fields). A malformed multipart body is BadRequest."""
    if ctype.startswith(_URLENCODED):
        if body.count(b"&") >= max_fields:
            raise _too_many(max_fields)
        # latin-1 both ways: the module gets the decoded bytes exactly.
        return [(k.encode("latin-1"), v.encode("latin-1"))
                for k, v in parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=max_fields, encoding="latin-1")]
    return _multipart_fields(ctype, body, max_fields)


def _too_many(max_fields: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the form has more than {max_fields} fields (CWEB_MAX_FORM_FIELDS)", code="too_many_form_fields")


def _multipart_fields(ctype: bytes, body: bytes, max_fields: int) -> list[tuple[bytes, bytes]]:
    import multipart
    from multipart.multipart import parse_options_header

    _, params = parse_options_header(ctype)
    boundary = params.get(b"boundary")
    if not boundary:
        return []
    # Every part starts with a delimiter line: the count bounds the parts.
    if body.count(b"--" + boundary) > max_fields + 1:
        raise _too_many(max_fields)
    fields: list[tuple[bytes, bytes]] = []
    current: dict[str, Any] = {}

    def on_part_begin() -> None:
        current.clear()
        current["headers"] = {}
        current["data"] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current["hname"] = current.get("hname", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current["hvalue"] = current.get("hvalue", b"") + data[start:end]

    def on_header_end() -> None:
        current["headers"][current.pop("hname", b"").lower()] = current.pop("hvalue", b"")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"].append(data[start:end])

    def on_part_end() -> None:
        disp = current["headers"].get(b"content-disposition", b"")
        _, p = parse_options_header(disp)
        name = p.get(b"name")
        if name is not None:
            fields.append((name, b"".join(current["data"])))

    parser = multipart.MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001 - any parser failure is the client's malformed body
        raise BadRequest(f"malformed multipart body: {exc}", code="malformed_form") from None
    return fields


class Dispatcher:
    """The outermost ASGI app."""

    def __init__(self, host: ModuleHost, control: Any, max_body: int, timeout: float, *, jobs: JobService,
                 guard: Guard | None = None, cors: Cors | None = None,
                 metrics: Any = None, max_form_fields: int = 1000, max_upload: int | None = None) -> None:
        self.host = host
        self.control = control
        self.max_body = max_body
        self.timeout = timeout
        # POST /jobs skips FastAPI and goes straight to the job service.
        self.jobs = jobs
        self.ws_handler: Callable | None = host.sockets
        self._heads: dict[bytes, tuple[list[tuple[bytes, bytes]], bytes]] = {}
        self.metrics = metrics
        # Refuses control-plane requests that lack a valid key (None: no keys).
        self.guard = guard
        # CORS on module routes (None: off).
        self.cors = cors
        self.max_form_fields = max_form_fields
        # The largest body POST /mgnt reads.
        self.max_upload = max_upload if max_upload is not None else max_body
        self._form_slots: asyncio.Semaphore | None = None

    def cors_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """CORS headers for the server's own answers on module paths (errors)."""
        return self.cors.for_request(headers) if self.cors is not None else []

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if _is_control(path):
                if self.guard is not None:
                    refused = self.guard(scope)
                    if refused is not None:
                        status, body, extra = refused
                        if _has_body(scope["headers"]):
                            # Not read: close, lingering, rather than wade through it.
                            extra = [*extra, _CLOSE]
                        await send_json(send, status, body, extra)
                        return
                if path == "/jobs" and scope["method"] == "POST":
                    # The busiest control-plane call skips FastAPI (same answers, same errors).
                    await submit_asgi(self.jobs, scope, receive, send)
                    return
                await self._control_capped(scope, receive, send, path)
                return
            await self.http(scope, receive, send, path)
        elif kind == "websocket":
            if self.ws_handler is not None and not _is_control(scope["path"]):
                entry = self.host.table.match_socket(scope["path"])
                if entry is not None and entry.version.state is _FORWARDED:  # another node serves it (api/cluster)
                    await entry.version.forward_socket(scope, receive, send)
                    return
                await self.ws_handler(scope, receive, send)
            elif self.guard is not None and (refused := self.guard(scope)) is not None:
                await refuse_websocket(scope, receive, send, *refused)
            else:
                await self.control(scope, receive, send)
        else:
            await self.control(scope, receive, send)

    async def http(self, scope: dict, receive: Callable, send: Callable, path: str) -> None:
        """A module route reached through ASGI (the server's own protocol
        normally answers these itself: api/http_server.py)."""
        method = scope["method"]
        if path == "/" and not self.has_route(method, path):
            await self.control(scope, receive, send)
            return
        headers = scope["headers"]
        body = await self._read_body(headers, receive, send)
        if body is None:
            return
        status, out, rbody = await self.serve(method, path, scope["query_string"], headers, body)
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else bytes(rbody)})

    async def _control_capped(self, scope: dict, receive: Callable, send: Callable, path: str) -> None:
        """The control plane, with its request body cut at a limit: an
        upload to /mgnt at the source limit (plus multipart framing), any
        other body at CWEB_MAX_BODY_BYTES. Past it the client gets a JSON 413
        at once (declared length) or as soon as the limit is crossed (chunked
        bodies), and the connection closes lingering (api/http_server.py), so
        nothing past the limit is spooled and a client still sending reads
        the 413."""
        if path == "/mgnt":
            limit, code = self.max_upload, "source_too_large"
            what = f"the upload exceeds {limit} bytes (CWEB_MAX_SOURCE_BYTES and multipart framing)"
        else:
            limit, code = self.max_body, "body_too_large"
            what = f"the request body exceeds the limit of {limit} bytes"
        for k, v in scope["headers"]:
            if k == b"content-length":
                if v.isdigit() and int(v) > limit:
                    await send_json(send, *error_body(PayloadTooLarge(what, code=code)), [_CLOSE])
                    return
                break
        received = 0
        refused = False

        async def capped_receive() -> dict:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await send_json(send, *error_body(PayloadTooLarge(what, code=code)), [_CLOSE])
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            if not refused:  # the 413 is the answer; the app's own is dropped
                await send(message)

        await self.control(scope, capped_receive, guarded_send)

    def answers(self, method: str, path: str) -> bool:
        """Whether serve() answers this request (the rest goes through ASGI)."""
        return self.host is not None and not _is_control(path) and (path != "/" or self.has_route(method, path))

    def has_route(self, method: str, path: str) -> bool:
        """Whether a module answers this path (any method): "/" is the
        control plane's status page unless a module claims it."""
        entry, allowed = self.host.table.match(method, path)
        return entry is not None or bool(allowed)

    def start(self, req: Any) -> bool:
        """Send a module request to its worker and answer it from the read that
        brings the worker's answer: no task, no future. req carries method,
        path, query, headers, body and write(status, headers, body), and
        run() to fall back on serve().

        False, with nothing sent, when serve() must take it: no route, a
        version that is not active, or a worker already gone."""
        method, path = req.method, req.path
        entry, _allowed = self.host.table.match(method, path)
        if entry is None or entry.version.state is not _ACTIVE or (method == "OPTIONS" and self.cors is not None):
            return False
        body = req.body
        data = None
        if body:
            ctype = form_type(req.headers)
            if ctype is not None:
                if req.size > INLINE_FORM_BYTES:
                    return False  # parsed in a thread by serve()
                try:
                    data = form_fields(ctype, body if type(body) is bytes else b"".join(body), self.max_form_fields)
                except ApiError as exc:
                    req.write(*json_reply(*error_body(exc), self.cors_headers(req.headers)))
                    return True
        version = entry.version
        t0 = perf_counter()

        def answered(reply: bytes | None, exc: BaseException | None) -> None:
            if exc is None:
                req.write(*self._answer(version, entry, reply, t0, req.headers, rendered=True))
            elif isinstance(exc, WorkerGone) and self._swapped(version, entry, method, path):
                req.run()
            else:
                req.write(*self._failure(exc, version, entry, t0, req.headers))

        frame = protocol.encode_http(_METHOD_CODES.get(method, 0), entry.index, path.encode(), req.query, body, req.headers, data)
        return version.pool.submit(frame, self.timeout, answered)

    async def serve(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes | list[bytes]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, response headers (content-length first) and body of a module
        route request; errors are JSON answers, never exceptions.

        body may be a list of chunks: they are joined straight into the frame."""
        entry, allowed = self.host.table.match(method, path)
        cors = self.cors
        if method == "OPTIONS" and cors is not None and (entry is None or cors.is_preflight(headers)):
            # As the original: the server answers OPTIONS itself (a module's
            # OPTIONS route still gets the requests that are not preflights).
            return 200, [(b"content-length", b"0"), *cors.preflight(headers)], b""
        if entry is None:
            # Off the matched path: counted by reason, never by path (unbounded labels).
            if self.metrics is not None:
                reason = "method_not_allowed" if allowed else "no_route"
                self.metrics.unmatched[reason] = self.metrics.unmatched.get(reason, 0) + 1
            if allowed:
                return json_reply(*error_body(MethodNotAllowed(f"{method} is not allowed on {path}", allowed=list(allowed))),
                                  [(b"allow", ", ".join(allowed).encode()), *self.cors_headers(headers)])
            return json_reply(*error_body(NotFound(f"no route for {path}")), self.cors_headers(headers))
        data = None
        if body:
            ctype = form_type(headers)
            if ctype is not None:
                try:
                    data = await self._form(ctype, body if isinstance(body, bytes) else b"".join(body))
                except ApiError as exc:
                    return json_reply(*error_body(exc), self.cors_headers(headers))
        t0 = perf_counter()
        # Two tries: a request that raced a hot swap (its version retired while
        # the body was read) is sent again to the version active now.
        for _ in range(2):
            # Match again: a swap may have happened while the body was read.
            entry, _allowed = self.host.table.match(method, path)
            if entry is None:
                return json_reply(*error_body(NotFound(f"no route for {path}")), self.cors_headers(headers))
            version = entry.version
            if version.state is _FORWARDED:  # another node serves it (api/cluster/forward.py)
                return await version.forward(method, path, query, headers, body)
            if version.state is _RESTARTING:
                try:
                    await asyncio.wait_for(version.ready.wait(), 5)
                except TimeoutError:
                    pass
            if version.state is _RESTARTING or version.state is _QUARANTINED:
                msg = (
                    f"module {version.name} is quarantined after repeated crashes; redeploy it"
                    if version.state is _QUARANTINED
                    else f"module {version.name} is restarting"
                )
                return json_reply(*error_body(Unavailable(msg, code=version.state, module=version.name, module_hash=version.module_hash)),
                                  self.cors_headers(headers))
            frame = protocol.encode_http(_METHOD_CODES.get(method, 0), entry.index, path.encode(), query, body, headers, data)
            try:
                reply = await version.pool.request(frame, self.timeout)
            except WorkerGone as exc:
                if self._swapped(version, entry, method, path):
                    continue
                return self._failure(exc, version, entry, t0, headers)
            except TimeoutError as exc:
                return self._failure(exc, version, entry, t0, headers)
            return self._answer(version, entry, reply, t0, headers)
        return json_reply(*error_body(Unavailable(f"module for {path} is being replaced; retry")), self.cors_headers(headers))

    async def _form(self, ctype: bytes, body: bytes) -> list[tuple[bytes, bytes]]:
        """A form's fields: small ones at once, large ones in a thread (at
        most FORM_THREADS at a time) so the loop keeps serving meanwhile."""
        if len(body) <= INLINE_FORM_BYTES:
            return form_fields(ctype, body, self.max_form_fields)
        if self._form_slots is None:
            self._form_slots = asyncio.Semaphore(FORM_THREADS)
        async with self._form_slots:
            return await asyncio.to_thread(form_fields, ctype, body, self.max_form_fields)

    def _swapped(self, version: Any, entry: Any, method: str, path: str) -> bool:
        """A worker gone because its version was retired while the request was
        on the way: the request goes to the version serving the route now."""
        return version.state in GONE and self.host.table.match(method, path)[0] is not entry

    def _answer(self, version: Any, entry: Any, reply: bytes, t0: float, request_headers: list[tuple[bytes, bytes]],
                rendered: bool = False) -> tuple[int, Any, bytes]:
        """The response for a worker's answer. Headers as (name, value) pairs,
        or with rendered=True as the HTTP header lines, ready to write."""
        status, block, body = protocol.split_http_response(reply)
        if self.metrics is not None:
            self.metrics.observe_request(version.name, entry.path, status, perf_counter() - t0, entry.method)
        headers, lines, per_request = self._module_headers(block)
        if per_request:  # CORS that depends on the request's Origin
            extra = self.cors.for_request(request_headers)  # type: ignore[union-attr]
            if extra:
                headers = [*headers, *extra]
                lines += b"".join(b"%b: %b\r\n" % kv for kv in extra)
        if rendered:
            return status, b"content-length: %d\r\n%b" % (len(body), lines), body
        return status, [(b"content-length", str(len(body)).encode()), *headers], body

    def _module_headers(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], bytes, bool]:
        """A module's response headers, cleaned: lower-case names, framing
        headers and ones that would break the response dropped, a default
        Content-Type, the CORS headers when the module set none and they do
        not depend on the request (else the flag says to add them per
        request). Cached by the raw block (bounded)."""
        cached = self._heads.get(block)
        if cached is not None:
            return cached
        out = []
        has_type = has_cors = False
        for k, v in protocol.decode_kv(block):
            lk = k.lower()
            if lk in _SKIP_HEADERS or _BAD_NAME.search(lk) or _BAD_VALUE.search(v):
                continue
            if lk == b"content-type":
                has_type = True
            elif lk == ACAO:
                has_cors = True
            out.append((lk, v))
        if not has_type:
            out.append(_DEFAULT_TYPE)
        per_request = False
        if self.cors is not None and not has_cors:
            if self.cors.constant is not None:
                out.extend(self.cors.constant)
            else:
                per_request = True
        if len(self._heads) >= _HEAD_CACHE_MAX:
            self._heads.clear()
        cached = self._heads[block] = (out, b"".join(b"%b: %b\r\n" % kv for kv in out), per_request)
        return cached

    def _failure(self, exc: BaseException, version: Any, entry: Any, t0: float,
                 request_headers: list[tuple[bytes, bytes]]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A request the module could not answer: counted, and named by module and hash."""
        if isinstance(exc, TimeoutError):
            error: ApiError = GatewayTimeout(f"module {version.name} did not answer within {self.timeout:g} s",
                                             code="handler_timeout", module=version.name, module_hash=version.module_hash)
        else:
            error = BadGateway(f"module {version.name} crashed while handling the request",
                               module=version.name, module_hash=version.module_hash)
        if self.metrics is not None:
            self.metrics.observe_request(version.name, entry.path, error.status, perf_counter() - t0, entry.method)
        return json_reply(*error_body(error),
                          self.cors_headers(request_headers))

    async def _read_body(self, headers: list, receive: Callable, send: Callable) -> bytes | None:
        for k, v in headers:
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    status, err = error_body(BadRequest("Content-Length is not a number", code="bad_content_length"))
                    await send_json(send, status, err)
                    return None
                if declared > self.max_body:
                    status, err = error_body(PayloadTooLarge(f"request body is {declared} bytes; the limit is {self.max_body}",
                                                             code="body_too_large"))
                    await send_json(send, status, err, [_CLOSE])
                    return None
                break
        msg = await receive()
        body = msg.get("body", b"")
        if len(body) > self.max_body:
            status, err = error_body(PayloadTooLarge(f"request body exceeds the limit of {self.max_body} bytes",
                                                     code="body_too_large"))
            await send_json(send, status, err, [_CLOSE])
            return None
        if not msg.get("more_body"):
            return body
        chunks = [body]
        size = len(body)
        while msg.get("more_body"):
            msg = await receive()
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                status, err = error_body(PayloadTooLarge(f"request body exceeds the limit of {self.max_body} bytes",
                                                     code="body_too_large"))
                await send_json(send, status, err, [_CLOSE])
                return None
            chunks.append(chunk)
        return b"".join(chunks)
