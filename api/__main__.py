"""python -m api: run the cweb server (embedded mode by default)."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import ssl
import sys

import uvicorn

from api import auth
from api.logs import configure_logging
from api.settings import Settings

log = logging.getLogger("cweb.api")

# Request-line + headers of one request (bytes), and header count: past
# either the request is refused 431. httptools itself has no such limit.
MAX_HEADER_BYTES = 64 << 10
MAX_HEADERS = 256
# Seconds a client has to send a request's line and headers (slowloris).
HEADER_TIMEOUT_S = 15.0
# Seconds a client has to send a request's whole body once its headers are in.
BODY_TIMEOUT_S = 120.0

# Used when present in the working directory, as c-web-modules does.
DEFAULT_CERT = "server.crt"
DEFAULT_KEY = "server.key"
PR_SET_DUMPABLE = 4


def resolve_tls(cert: str, key: str, cwd: str) -> tuple[str, str] | None:
    """The (certificate, key) pair to serve with, or None for plain HTTP.

    Explicit paths win; otherwise server.crt + server.key in cwd. Raises
    ValueError with a message for the operator when the pair is unusable."""
    if bool(cert) != bool(key):
        raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key, or CWEB_TLS_CERT and CWEB_TLS_KEY)")
    if not cert:
        c, k = os.path.join(cwd, DEFAULT_CERT), os.path.join(cwd, DEFAULT_KEY)
        if os.path.isfile(c) and os.path.isfile(k):
            cert, key = c, k
        elif os.path.isfile(c) or os.path.isfile(k):
            raise ValueError(f"found only one of {DEFAULT_CERT} and {DEFAULT_KEY} in {cwd}; TLS needs both")
        else:
            return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use TLS certificate {cert} with key {key}: {exc}") from exc
    return os.path.abspath(cert), os.path.abspath(key)


def http_protocol(header_timeout: float = HEADER_TIMEOUT_S, body_timeout: float = BODY_TIMEOUT_S) -> object:
    """uvicorn's httptools protocol with header limits and client timeouts;
    plain "httptools" if this uvicorn's internals are not the expected ones."""
    try:
        import orjson
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:  # pragma: no cover - another uvicorn layout
        return "httptools"

    class _Refused(Exception):
        pass

    # Deadlines are checked by one sweep a second over every connection: a timer
    # per request (armed and cancelled twice per request) costs more on the hot path.
    live: set = set()
    sweeping: list[asyncio.TimerHandle] = []

    def sweep(loop: asyncio.AbstractEventLoop) -> None:
        sweeping.clear()
        now = loop.time()
        for proto in list(live):
            if proto._deadline is not None and now >= proto._deadline:
                proto._deadline = None
                proto._expire(*proto._why)
        if live:
            sweeping.append(loop.call_later(1.0, sweep, loop))

    class LimitedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        _refusal: tuple[int, str, str] | None = None
        _deadline: float | None = None
        _why: tuple[str, str] = ("", "")
        _header_bytes = 0
        _header_count = 0
        _in_request = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            live.add(self)
            if not sweeping:
                sweeping.append(self.loop.call_later(1.0, sweep, self.loop))
            self._arm(header_timeout, "request_header_timeout", "the request line and headers took too long to arrive")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            live.discard(self)
            super().connection_lost(exc)

        def _arm(self, delay: float, code: str, message: str) -> None:
            self._deadline = self.loop.time() + delay
            self._why = (code, message)

        def _disarm(self) -> None:
            self._deadline = None

        def _expire(self, code: str, message: str) -> None:
            if self.transport.is_closing():
                return
            if self._in_request:
                self._send_json_and_close(408, code, message)
            else:  # a connection that never sent a byte: just close it
                self.transport.close()

        def _send_json_and_close(self, status: int, code: str, message: str) -> None:
            body = orjson.dumps({"error": code, "message": message})
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
                self._refusal = (
                    431, "headers_too_large",
                    f"request line and headers are limited to {MAX_HEADER_BYTES} bytes and {MAX_HEADERS} headers",
                )
                raise _Refused()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_request = True
            self._header_bytes = self._header_count = 0
            if self._deadline is None:
                self._arm(header_timeout, "request_header_timeout", "the request line and headers took too long to arrive")

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4, 1)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._arm(body_timeout, "request_body_timeout", "the request body took too long to arrive")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_request = False
            self._disarm()
            super().on_message_complete()

        def handle_websocket_upgrade(self) -> None:
            self._disarm()
            super().handle_websocket_upgrade()

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            if self._refusal is not None:
                self._send_json_and_close(*self._refusal)
            else:
                self._send_json_and_close(
                    400, "bad_http",
                    "malformed HTTP request (invalid syntax, bad chunking, or conflicting Content-Length/Transfer-Encoding)",
                )

    return LimitedHttpToolsProtocol


def _not_dumpable() -> None:
    """Keep module workers (same uid, no CAP_SYS_PTRACE) out of this process's
    /proc/<pid>/environ and /proc/<pid>/mem, where the API key lives."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env()
    p = argparse.ArgumentParser(prog="python -m api", description="cweb server")
    p.add_argument("--host", default=settings.host, help="listen address (env CWEB_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, default=settings.port, help="listen port (env CWEB_PORT, default 8080)")
    p.add_argument("--data-dir", default=settings.data_dir, help="state directory (env CWEB_DATA_DIR, default ./data)")
    p.add_argument("--tls-cert", default=settings.tls_cert, help="PEM certificate (env CWEB_TLS_CERT; ./server.crt if present)")
    p.add_argument("--tls-key", default=settings.tls_key, help="PEM private key (env CWEB_TLS_KEY; ./server.key if present)")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow listening beyond loopback without CWEB_API_KEY")
    args = p.parse_args(argv)
    settings.host, settings.port, settings.data_dir = args.host, args.port, args.data_dir
    settings.tls_cert, settings.tls_key = args.tls_cert, args.tls_key
    settings.insecure_no_auth = args.insecure_no_auth
    configure_logging(settings.log_json)

    problem = auth.startup_problem(settings)
    if problem:
        print(f"cweb: {problem}", file=sys.stderr)
        sys.exit(2)
    if settings.insecure_no_auth and not settings.api_keys and not auth.is_loopback(settings.host):
        banner = "!" * 78
        log.warning(
            "\n%s\n  INSECURE: listening on %s with NO API KEY (--insecure-no-auth).\n"
            "  Anyone who can reach this port can upload and run C code on this machine.\n%s",
            banner, settings.host, banner,
        )
    try:
        tls = resolve_tls(settings.tls_cert, settings.tls_key, os.getcwd())
    except ValueError as exc:
        print(f"cweb: {exc}", file=sys.stderr)
        sys.exit(2)
    if tls:
        settings.tls_cert, settings.tls_key = tls
        log.info("TLS on: HTTPS and WSS with certificate %s", tls[0])
    if settings.api_keys:
        log.info("API key required on deploy, module management and job control (%d key(s) configured)", len(settings.api_keys))
    _not_dumpable()

    from api.app import create_app  # after the checks: refusing to start stays instant

    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http_protocol(
            float(os.environ.get("CWEB_HEADER_TIMEOUT") or HEADER_TIMEOUT_S),
            float(os.environ.get("CWEB_BODY_TIMEOUT") or BODY_TIMEOUT_S),
        ),
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_message,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_interval,
        lifespan="on",
        log_level="warning",
        access_log=False,
        log_config=None,  # uvicorn's loggers write through configure_logging's handler
        # No proxy in front by default; the middleware costs time on every request.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )


if __name__ == "__main__":
    main()
