"""The recipes of docs/DEBUGGING.md, run as a user runs them: scripts/sanitize.py
builds a module with the real glue under ASan and UBSan and drives its
handlers; the SDK tarball's headers are enough for gcc's own checks."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx

from tests.conftest import ROOT, Server

MODULE = r"""#include <cweb.h>
#include <stdlib.h>
static int item(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    const char *q = http_kv_get(req->params, "q");
    snprintf(res->body, HTTP_RESPONSE_SIZE, "item %s q=%s", req->path, q ? q : "-");
    return 0;
}
static int overflow(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx; (void)req;
    char *p = malloc(8);
    p[8] = 'x';
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%c", p[0]);
    free(p);
    return 0;
}
static int ub(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    int big = 2147483647;
    big += (int)strlen(req->path);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%d", big);
    return 0;
}
export module_t config = {
    .name = "san", .author = "me",
    .routes = { {"/items/[0-9]+", "GET", item, NONE}, {"/overflow", "GET", overflow, NONE}, {"/ub", "GET", ub, NONE} }, .size = 3,
};
"""


def sanitize(tmp_path: Path, *requests: str) -> subprocess.CompletedProcess:
    source = tmp_path / "mod.c"
    source.write_text(MODULE)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "sanitize.py"), str(source), *requests],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_sanitize_runs_a_clean_handler_and_answers(tmp_path: Path) -> None:
    r = sanitize(tmp_path, "GET /items/42?q=hi", "GET /nope")
    assert 0 == r.returncode, r.stderr
    assert "GET /items/42 -> 200 item /items/42 q=hi\nGET /nope: no route of module 'san' matches\n" == r.stdout


def test_sanitize_stops_at_a_heap_overflow_naming_the_line(tmp_path: Path) -> None:
    r = sanitize(tmp_path, "GET /items/1", "GET /overflow", "GET /items/2")
    assert 0 != r.returncode
    assert "GET /items/1 -> 200" in r.stdout and "/items/2" not in r.stdout, "the run stops at the error"
    assert "mod.c:12" in r.stderr and ("AddressSanitizer: heap-buffer-overflow" in r.stderr or "insufficient space" in r.stderr), r.stderr[-2000:]


def test_sanitize_stops_at_undefined_behaviour_naming_the_line(tmp_path: Path) -> None:
    r = sanitize(tmp_path, "GET /ub")
    assert 0 != r.returncode
    assert "mod.c:20" in r.stderr and "signed integer overflow" in r.stderr, r.stderr[-2000:]


def test_sdk_tarball_headers_are_enough_for_gccs_static_analyzer(server: Server, tmp_path: Path) -> None:
    """`gcc -fanalyzer` with the headers of /sdk.tar.gz flags the overflowing handler without running anything."""
    tar = httpx.get(f"{server.url}/sdk.tar.gz", timeout=30)
    assert 200 == tar.status_code
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as t:
        t.extractall(tmp_path, filter="data")
    (tmp_path / "mod.c").write_text(MODULE)
    r = subprocess.run(["gcc", "-c", "-o", "/dev/null", "-fanalyzer", "-Wall", "-I", str(tmp_path / "cweb-sdk"), "mod.c"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert 0 == r.returncode, r.stderr
    assert re.search(r"mod\.c:1[23]:\d+: warning: .*\[-Wanalyzer-", r.stderr), r.stderr
