"""python -m builder: the builder service (HTTP) over a store directory."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from builder.service import BuilderSettings, create_app


def main(argv: list[str] | None = None) -> None:
    settings = BuilderSettings.from_env()
    p = argparse.ArgumentParser(prog="python -m builder", description="cweb builder service")
    p.add_argument("--host", default=settings.host, help="listen address (env CWEB_BUILDER_HOST, default 127.0.0.1; 0.0.0.0 in the container)")
    p.add_argument("--port", type=int, default=settings.port, help="listen port (env CWEB_BUILDER_PORT, default 8081)")
    p.add_argument("--store", default=settings.store_dir, help="content-addressed store (env CWEB_STORE_DIR, default ./data/store)")
    args = p.parse_args(argv)
    settings.host, settings.port, settings.store_dir = args.host, args.port, args.store
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
