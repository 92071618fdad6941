"""python -m api: run the cweb server (embedded mode by default)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from api.app import create_app
from api.settings import Settings


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_message,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_interval,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
