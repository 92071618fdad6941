"""python -m api: run the cweb server (embedded mode by default)."""

from __future__ import annotations

import signal
import sys


def _interrupted(*_: object) -> None:
    print("cweb: interrupted", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
    # A Ctrl-C while the imports below run (seconds on a loaded machine)
    # ends the server quietly; run() gives Ctrl-C back to Python after them.
    signal.signal(signal.SIGINT, _interrupted)

import argparse
import logging
import os
import socket
import ssl

import uvicorn

from api import auth
from api.http_server import http_protocol
from api.logs import configure_logging
from api.settings import Settings, node_problem
from runtime.limits import make_undumpable

log = logging.getLogger("cweb.api")

# Used when present in the working directory, as c-web-modules does.
DEFAULT_CERT = "server.crt"
DEFAULT_KEY = "server.key"


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


class _Server(uvicorn.Server):
    """uvicorn's server, saying "ready" once the port is bound (the app's
    lifespan, where the runtime and modules come up, runs before the bind)."""

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            cfg = self.config
            log.info("cweb ready on %s://%s:%d", "https" if cfg.is_ssl else "http", cfg.host, cfg.port)


def port_problem(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on (in use, not ours), checked
    before the slow start so the answer is immediate; None if it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc} (pick another with --port or CWEB_PORT)"
    return None


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

    problem = auth.startup_problem(settings) or node_problem(settings) or port_problem(settings.host, settings.port)
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
        # The embedded runtime agent signs module tokens with this key pair
        # (Settings.agent_settings hands it over).
    if settings.api_keys:
        log.info("API key required on deploy, module management and job control (%d key(s) configured)", len(settings.api_keys))
    # Module workers (same uid, no CAP_SYS_PTRACE) stay out of this process's
    # /proc/<pid>/environ and /proc/<pid>/mem, where the API key lives.
    make_undumpable()

    from api.app import create_app  # after the checks: refusing to start stays instant

    app = create_app(settings)  # resolves the node id
    # X-Cweb-Node on every answer: uvicorn renders its default headers once
    # (with the date, each second) and the module fast path reuses them
    # (api/http_server.py status_prefix), so it costs nothing per request.
    node_header = [("X-Cweb-Node", settings.node_id)] if settings.node_header else []
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http_protocol(app, settings.header_timeout, settings.body_timeout),
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
        headers=node_header,
        timeout_graceful_shutdown=5,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = _Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn raises a Ctrl-C again once it has stopped: after a clean stop
        # that is the end (exit 0); before "ready", the start was interrupted (130).
        if not server.started:
            raise
        return
    if not server.started:
        sys.exit(1)


def run() -> None:
    """main() with Ctrl-C an ordinary way to stop, at any moment: no traceback."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        main()
    except KeyboardInterrupt:
        _interrupted()


if __name__ == "__main__":
    run()
