"""The security suite's server: an API key set, a short request timeout, and
a sentinel module whose route must keep answering after every attack."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, route_module, unique

# Two keys, as during a rotation: both must work.
OLD_KEY = "old-" + uuid.uuid4().hex
API_KEY = "sec-" + uuid.uuid4().hex
REQUEST_TIMEOUT_S = 2
HEADER_TIMEOUT_S = 3
SENTINEL_PATH = "/sentinel_alive"
SENTINEL_BODY = "sentinel alive"


def auth(key: str = API_KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


class SecServer(Server):
    """A Server whose deploys carry the key unless told otherwise."""

    def deploy(self, source: str | bytes, filename: str = "module.c", headers: dict | None = None, **kw: object) -> httpx.Response:
        return super().deploy(source, filename, headers=auth() if headers is None else headers, **kw)

    def get(self, path: str, **kw: object) -> httpx.Response:
        with self.client() as c:
            return c.get(path, **kw)  # type: ignore[arg-type]

    def assert_healthy(self) -> None:
        """/healthz and the sentinel module's route still answer 200."""
        assert self.proc is not None and self.proc.poll() is None, "the server process died"
        with self.client() as c:
            h = c.get("/healthz")
            assert h.status_code == 200, h.text
            r = c.get(SENTINEL_PATH)
            assert r.status_code == 200, r.text
            assert r.text == SENTINEL_BODY

    def store_bytes(self) -> list[tuple[Path, bytes]]:
        """Every file under the data dir (store, registry, glue), with its bytes."""
        out = []
        for root, _, files in os.walk(self.data_dir):
            for name in files:
                p = Path(root) / name
                try:
                    out.append((p, p.read_bytes()))
                except OSError:
                    pass
        return out


def start_sec_server(data_dir: Path, env: dict | None = None, **kw: object) -> SecServer:
    base = {
        "CWEB_API_KEY": f"{OLD_KEY},{API_KEY}",
        "CWEB_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
        "CWEB_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S),
    }
    base.update(env or {})
    s = SecServer(data_dir, env=base, **kw)  # type: ignore[arg-type]
    s.start()
    return s


def deploy_sentinel(s: SecServer) -> None:
    r = s.deploy(route_module(unique("sentinel"), SENTINEL_PATH, SENTINEL_BODY))
    assert r.status_code == 200, r.text


@pytest.fixture(scope="session")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecServer]:
    s = start_sec_server(tmp_path_factory.mktemp("cweb-sec") / "data")
    try:
        deploy_sentinel(s)
        yield s
    finally:
        s.stop()


@pytest.fixture
def healthy(sec: SecServer) -> Iterator[SecServer]:
    """The shared server, checked healthy before and after the test."""
    sec.assert_healthy()
    yield sec
    sec.assert_healthy()


@pytest.fixture(scope="session")
def sandboxed(sec: SecServer) -> bool:
    return sec.get("/healthz").json().get("builds") == "bubblewrap"


@pytest.fixture
def needs_sandbox(sandboxed: bool) -> None:
    if not sandboxed:
        pytest.skip("bubblewrap cannot run here: the compile sandbox is not in use, so host-file attacks would succeed by design")


def module(name: str, routes: list[tuple[str, str, str]], extra: str = "") -> str:
    """A module with handlers given as (path, function name, C body of the handler)."""
    funcs = "\n".join(
        f"static int {fn}(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {{\n"
        f"    (void)ctx; (void)req;\n{body}\n}}"
        for _, fn, body in routes
    )
    table = ", ".join(f'{{"{path}", "GET", {fn}, NONE}}' for path, fn, _ in routes)
    return f"""
#include <cweb.h>
#include <stdlib.h>
#include <unistd.h>
{extra}
{funcs}
export module_t config = {{
    .name = "{name}", .author = "security-tests",
    .routes = {{ {table} }}, .size = {len(routes)},
}};
"""


OK_BODY = '    snprintf(res->body, HTTP_RESPONSE_SIZE, "ok"); res->status = HTTP_200_OK; return 0;'
