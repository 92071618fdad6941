"""A real PostgreSQL for the suites: the cweb-postgres image (Debian's
postgresql-15, built by scripts/images.sh) in a container of the session,
and a fresh database per test that asks for one.

The container runs under testcontainers on 127.0.0.1 and a free port, and
is removed at the end of the session, even when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT

IMAGE = f"cweb-postgres:{os.environ.get('CWEB_IMAGE_TAG', 'dev')}"
USER = "cweb"
PASSWORD = f"test-{uuid.uuid4().hex[:12]}"
# Seconds: initdb plus the first start, under load.
START_TIMEOUT_S = 90
# Seconds: building the image from the Debian base (apt, postgresql-15).
IMAGE_TIMEOUT_S = 900


def _ensure_image() -> None:
    import docker

    client = docker.from_env()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run([str(ROOT / "scripts" / "images.sh"), "postgres"], cwd=ROOT, check=True, timeout=IMAGE_TIMEOUT_S)
    finally:
        client.close()


async def _ready(url: str, timeout: float) -> None:
    import asyncpg

    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=5)
            await conn.close()
            return
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


def _sql(url: str, statement: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of the session's PostgreSQL (its `cweb` database)."""
    from testcontainers.core.container import DockerContainer

    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
    _ensure_image()
    container = DockerContainer(IMAGE).with_env("POSTGRES_PASSWORD", PASSWORD).with_exposed_ports(5432)
    container.start()
    try:
        url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{container.get_exposed_port(5432)}/cweb"
        asyncio.run(_ready(url, START_TIMEOUT_S))
        yield url
    finally:
        container.stop()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test's own on the session's server, dropped after it."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _sql(postgres_server, f'CREATE DATABASE "{name}"')
    yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    _sql(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
