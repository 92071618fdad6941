"""A real PostgreSQL for the suites: the cweb-postgres image (Debian's
postgresql-15, built by scripts/images.sh) in a container of the session,
and a fresh database per test that asks for one.

The container runs under testcontainers on 127.0.0.1 and a free port, and
is removed at the end of the session, even when a test fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

IMAGE = f"cweb-postgres:{os.environ.get('CWEB_IMAGE_TAG', 'dev')}"
USER = "cweb"
PASSWORD = f"test-{uuid.uuid4().hex[:12]}"
# Seconds: initdb plus the first start, under load.
START_TIMEOUT_S = 90
# Seconds: building the image from the Debian base (apt, postgresql-15).
IMAGE_TIMEOUT_S = 900


def ensure_image(image: str, name: str) -> None:
    """Build one of scripts/images.sh's images (`name`) when `image` is not in
    the engine. Without an engine the test skips with the reason, as the
    container suite does (and fails under CWEB_TEST_NO_SKIP=1, as in CI)."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception:  # noqa: BLE001 - any failure means: no engine here
        pytest.skip(f"{image} needs a Docker engine (docker info fails): run scripts/ensure-docker.sh as root, as .ci/run does")
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        subprocess.run([str(ROOT / "scripts" / "images.sh"), name], cwd=ROOT, check=True, timeout=IMAGE_TIMEOUT_S)
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
    ensure_image(IMAGE, "postgres")
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


# ---- CWEB_TEST_DATABASE=postgres: every Server of the session on PostgreSQL ----

TEST_DATABASE = os.environ.get("CWEB_TEST_DATABASE", "sqlite") or "sqlite"
if TEST_DATABASE not in ("sqlite", "postgres"):
    raise RuntimeError(f"CWEB_TEST_DATABASE must be sqlite or postgres, not {TEST_DATABASE!r}")
_servers_url: str | None = None


def use_for_servers(server_url: str) -> None:
    global _servers_url
    _servers_url = server_url


def server_database(data_dir: Path) -> str | None:
    """The database a tests/conftest.py Server on data_dir uses under
    CWEB_TEST_DATABASE=postgres (None otherwise): one per data dir, so a
    restart on the same dir finds its state, and a fresh dir starts empty."""
    if _servers_url is None:
        return None
    name = "d_" + hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]

    async def create() -> None:
        import asyncpg

        conn = await asyncpg.connect(_servers_url, timeout=10)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return _servers_url.rsplit("/", 1)[0] + f"/{name}"


def query(url: str, sql: str, *params: object) -> list[tuple]:
    """Rows of one statement on a PostgreSQL database (`?` placeholders, as sqlite3's)."""
    import asyncpg

    parts = sql.split("?")
    sql = parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))

    async def run() -> list[tuple]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *params)]
        finally:
            await conn.close()

    return asyncio.run(run())


def jobs_rows(server: Any, sql: str, *params: object) -> list[tuple]:
    """Rows of a query on a server's jobs database: its jobs.db, or its
    PostgreSQL database when it runs on one (same tables and columns)."""
    url = getattr(server, "database_url", None)
    if url:
        return query(url, sql, *params)
    with sqlite3.connect(Path(server.data_dir) / "jobs.db") as db:
        return db.execute(sql, params).fetchall()


def jobs_db_bytes(server: Any) -> int:
    """What the server's jobs database takes on disk."""
    url = getattr(server, "database_url", None)
    if url:
        return int(query(url, "SELECT pg_total_relation_size('jobs') + pg_total_relation_size('job_events')")[0][0])
    return sum(p.stat().st_size for p in Path(server.data_dir).glob("jobs.db*"))
