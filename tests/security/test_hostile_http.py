"""Hostile HTTP: every malformed or oversized request gets a clear 4xx and
nothing it sends corrupts the store or the registry."""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import route_module, unique
from tests.security.conftest import HEADER_TIMEOUT_S, SENTINEL_PATH, SecServer, auth


def _complete(out: bytes) -> bool:
    head, sep, body = out.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def raw(s: SecServer, data: bytes, wait: float = 10.0) -> bytes:
    """Send bytes on a fresh connection; the first response, or all until the server closes."""
    out = b""
    with socket.create_connection(("127.0.0.1", s.port), timeout=wait) as c:
        try:
            c.sendall(data)
            while not _complete(out) and (chunk := c.recv(65536)):
                out += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            out += b"<no answer>"
    return out


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def survivor(sec: SecServer) -> tuple[str, str]:
    """A module deployed before the attacks; it must be served unchanged after."""
    path = f"/{unique('survivor')}"
    r = sec.deploy(route_module(unique("survivor"), path, "still here"))
    assert r.status_code == 200, r.text
    return path, r.json()["module_hash"]


def upload(s: SecServer, **kw: object) -> object:
    with s.client() as c:
        return c.post("/mgnt", headers={**auth(), **kw.pop("headers", {})}, **kw)  # type: ignore[arg-type]


def test_non_multipart_upload(healthy: SecServer) -> None:
    r = upload(healthy, content=b"int x;", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["error"] == "not_multipart"
    r = upload(healthy, json={"code": "int x;"})
    assert r.status_code == 400 and r.json()["error"] == "not_multipart"


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("multipart/form-data; boundary=xyz", b"this is not multipart at all"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data; name=\"code\"\r\n\r\nint x;"),
        ("multipart/form-data", b"--xyz\r\n\r\n--xyz--\r\n"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nNo-Colon-Header\r\n\r\nint x;\r\n--xyz--\r\n"),
    ],
)
def test_malformed_multipart(healthy: SecServer, ctype: str, body: bytes) -> None:
    r = upload(healthy, content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400, r.text
    assert r.json()["error"] in ("malformed_upload", "missing_code", "not_multipart")


def test_missing_code_field(healthy: SecServer) -> None:
    r = upload(healthy, files={"source": ("m.c", b"int x;", "text/x-c")})
    assert r.status_code == 400 and r.json()["error"] == "missing_code"


def test_source_over_the_limit(healthy: SecServer) -> None:
    big = b"/*" + b"x" * (1 << 20) + b"*/ int x;\n"
    r = upload(healthy, files={"code": ("big.c", big, "text/x-c")})
    assert r.status_code == 413 and r.json()["error"] == "source_too_large"


@pytest.mark.parametrize(
    ("source", "reason"),
    [(b"int x = 1; /* \xff\xfe\xfd */\n", "UTF-8"), (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "NUL"), (b"   \n\t ", "empty")],
)
def test_non_text_source(healthy: SecServer, source: bytes, reason: str) -> None:
    r = upload(healthy, files={"code": ("m.c", source, "text/x-c")})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "bad_source" and reason in r.json()["message"]


def test_header_too_large(healthy: SecServer) -> None:
    out = raw(healthy, b"GET " + SENTINEL_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 << 10) + b"\r\n\r\n")
    assert status_of(out) == 431 and b"headers_too_large" in out


def test_too_many_headers(healthy: SecServer) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(400))
    out = raw(healthy, b"GET " + SENTINEL_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status_of(out) == 431


def test_url_too_long(healthy: SecServer) -> None:
    out = raw(healthy, b"GET /" + b"a" * (100 << 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(out) == 431


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /mgnt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST {route} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcdefg",
        b"POST {route} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST {route} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"GET {route} HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
    ],
    ids=["cl-te-control", "te-cl-module", "two-lengths", "te-list", "bad-chunk", "space-in-name"],
)
def test_request_smuggling_shapes_are_rejected(healthy: SecServer, request_bytes: bytes) -> None:
    out = raw(healthy, request_bytes.replace(b"{route}", SENTINEL_PATH.encode()))
    assert status_of(out) == 400, out[:300]
    assert b"bad_http" in out


def test_body_over_the_limit_on_a_module_route(healthy: SecServer) -> None:
    path = f"/{unique('post')}"
    assert healthy.deploy(route_module(unique("post"), path, "posted", method="POST")).status_code == 200
    out = raw(healthy, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
    assert status_of(out) == 413 and b"body_too_large" in out
    with healthy.client() as c:
        assert c.post(path, content=b"x" * (9 << 20)).status_code == 413  # streamed past the 8 MiB default
        assert c.post(path, content=b"small").text == "posted"


def test_slow_headers_time_out(healthy: SecServer) -> None:
    t0 = time.monotonic()
    out = raw(healthy, b"GET " + SENTINEL_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n", wait=HEADER_TIMEOUT_S + 10)
    assert status_of(out) == 408 and b"request_header_timeout" in out
    assert time.monotonic() - t0 < HEADER_TIMEOUT_S + 5


def test_idle_connection_is_closed(healthy: SecServer) -> None:
    t0 = time.monotonic()
    out = raw(healthy, b"", wait=HEADER_TIMEOUT_S + 10)
    assert out == b""
    assert time.monotonic() - t0 < HEADER_TIMEOUT_S + 5


def _chunks(total: int, size: int = 1 << 20):
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


def _multipart_prefix() -> bytes:
    return b'--bb\r\nContent-Disposition: form-data; name="code"; filename="big.c"\r\n\r\n'


def test_chunked_upload_over_the_limit_is_a_413_httpx_reads(healthy: SecServer) -> None:
    """50 MB sent chunked (no Content-Length) to /mgnt: cut at the source
    limit; the client, still sending, reads the JSON 413 (lingering close),
    not "connection reset"."""

    def body():
        yield _multipart_prefix()
        yield from _chunks(50 << 20)

    t0 = time.monotonic()
    r = upload(healthy, content=body(), headers={"Content-Type": "multipart/form-data; boundary=bb"})
    assert (r.status_code, r.json()["error"]) == (413, "source_too_large"), r.text
    assert r.headers["connection"] == "close"
    assert time.monotonic() - t0 < 30


def test_declared_upload_over_the_limit_is_a_413_the_client_reads(healthy: SecServer) -> None:
    """The same with a Content-Length the server refuses before reading: the
    client sends its 50 MB anyway (as httpx and urllib do) and still reads the 413."""
    body = _multipart_prefix() + b"x" * (50 << 20) + b"\r\n--bb--\r\n"
    r = upload(healthy, content=body, headers={"Content-Type": "multipart/form-data; boundary=bb"})
    assert (r.status_code, r.json()["error"]) == (413, "source_too_large"), r.text


def test_module_route_body_over_the_limit_is_a_413_the_client_reads(healthy: SecServer) -> None:
    """Module routes: 20 MB streamed (chunked) or declared, past the 8 MiB
    limit: httpx reads the 413 each time, and the route still answers after."""
    path = f"/{unique('big')}"
    assert healthy.deploy(route_module(unique("big"), path, "posted", method="POST")).status_code == 200
    with healthy.client() as c:
        r = c.post(path, content=_chunks(20 << 20))
        assert (r.status_code, r.json()["error"]) == (413, "body_too_large")
        r = c.post(path, content=b"y" * (20 << 20))
        assert (r.status_code, r.json()["error"]) == (413, "body_too_large")
        assert c.post(path, content=b"small").text == "posted"


def test_chunked_upload_spools_nothing_past_the_limit(make_server, tmp_path) -> None:
    """While 50 MB arrive chunked, the server's temporary files (multipart
    spooling) never hold more than the source limit plus framing."""
    import os
    import threading
    from pathlib import Path

    from api.app import UPLOAD_FRAMING

    spool = tmp_path / "spool"
    spool.mkdir()
    limit = 1 << 20
    s = make_server(env={"TMPDIR": str(spool)})
    peak = [0]
    done = threading.Event()

    fds = Path(f"/proc/{s.proc.pid}/fd")

    def watch() -> None:
        # Spooled files are unlinked at once: find them among the server's
        # open descriptors, not in the directory.
        while not done.is_set():
            total = 0
            for fd in fds.iterdir():
                try:
                    if os.readlink(fd).startswith(str(spool)):
                        total += os.stat(fd).st_size
                except OSError:
                    pass
            peak[0] = max(peak[0], total)
            time.sleep(0.005)

    def body():
        yield _multipart_prefix()
        for chunk in _chunks(50 << 20, 256 << 10):
            yield chunk
            time.sleep(0.001)  # let the watcher see every stage
        yield b"\r\n--bb--\r\n"

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with s.client() as c:
            r = c.post("/mgnt", content=body(), headers={"Content-Type": "multipart/form-data; boundary=bb"})
    finally:
        done.set()
        watcher.join()
    assert (r.status_code, r.json()["error"]) == (413, "source_too_large")
    assert peak[0] <= limit + UPLOAD_FRAMING, f"{peak[0]} bytes spooled"


def test_unauthorized_big_upload_gets_its_401_and_a_closed_connection(healthy: SecServer) -> None:
    """A 30 MB upload without a key: refused before it is read, the client
    (still sending) reads the 401, and the connection is not kept to wade
    through the rest."""
    r = upload(healthy, content=_multipart_prefix() + b"x" * (30 << 20), headers={"Authorization": "", "Content-Type": "multipart/form-data; boundary=bb"})
    assert (r.status_code, r.json()["error"], r.headers["connection"]) == (401, "unauthorized", "close")


def test_cli_deploy_of_a_huge_file_reads_the_413(healthy: SecServer, tmp_path) -> None:
    """./cweb deploy of a 50 MB file: the CLI prints the server's 413, no reset."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.security.conftest import API_KEY

    big = tmp_path / "huge.c"
    big.write_bytes(b"/*" + b"x" * (50 << 20) + b"*/\n")
    out = subprocess.run([sys.executable, str(ROOT / "cweb"), "--server", healthy.url, "--api-key", API_KEY, "deploy", str(big)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "source_too_large" in out.stdout + out.stderr or "413" in out.stdout + out.stderr, (out.stdout, out.stderr)
    assert "reset" not in (out.stdout + out.stderr).lower()


def test_state_is_intact_after_the_attacks(healthy: SecServer, survivor: tuple[str, str]) -> None:
    # Runs last in this file: the module deployed before everything is still served, unchanged.
    path, module_hash = survivor
    with healthy.client() as c:
        assert c.get(path).text == "still here"
        listed = {m["module_hash"] for m in c.get("/modules").json()["modules"]}
    assert module_hash in listed
    artifact = healthy.data_dir / "store" / "artifacts" / f"{module_hash}.so"
    if artifact.exists():
        import hashlib

        assert hashlib.sha256(artifact.read_bytes()).hexdigest() == module_hash
