"""TLS end to end: HTTPS and WSS on the same port, certificates made at test time."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLES, ROOT, free_port, route_module, unique
from tests.security.conftest import API_KEY, SecServer, auth

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_context(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ssl.create_default_context(cafile=str(path))


def write_pair(ca: trustme.CA, cert_path: Path, key_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))


@pytest.fixture(scope="module")
def tls_server(ca: trustme.CA, ca_context: ssl.SSLContext, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecServer]:
    """server.crt + server.key in the working directory, as c-web-modules does."""
    workdir = tmp_path_factory.mktemp("tls-workdir")
    write_pair(ca, workdir / "server.crt", workdir / "server.key")
    s = SecServer(workdir / "data", env={"CWEB_API_KEY": API_KEY, "CWEB_WORKDIR": str(workdir)})
    s.scheme, s.verify = "https", ca_context
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_https_end_to_end(tls_server: SecServer) -> None:
    path = f"/{unique('tls')}"
    r = tls_server.deploy(route_module(unique("tls"), path, "over tls"))
    assert r.status_code == 200, r.text
    with tls_server.client() as c:
        assert c.get("/healthz").status_code == 200
        assert c.get(path).text == "over tls"
        assert c.post("/mgnt", files={"code": ("m.c", b"int x;", "text/x-c")}).status_code == 401


def test_plain_http_is_not_served_on_the_tls_port(tls_server: SecServer) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/healthz", timeout=5)


def test_untrusted_certificate_is_refused_by_a_verifying_client(tls_server: SecServer) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://127.0.0.1:{tls_server.port}/healthz", timeout=5, verify=ssl.create_default_context())


def test_wss_end_to_end(tls_server: SecServer, ca_context: ssl.SSLContext) -> None:
    websockets_sync = pytest.importorskip("websockets.sync.client")
    listed = tls_server.get("/modules").json()["modules"]
    if listed and "websockets" not in listed[0]:
        pytest.skip("this server does not serve module sockets yet (GET /modules has no websockets field)")
    source = (EXAMPLES / "websocket.c").read_text().replace('"websocket"', f'"{unique("wss")}"', 1)
    ws_path = f"/{unique('wss')}"
    source = source.replace('{"/websocket"', f'{{"{ws_path}"')
    r = tls_server.deploy(source)
    assert r.status_code == 200, r.text
    assert {"path": ws_path} in r.json()["websockets"]
    with websockets_sync.connect(f"wss://127.0.0.1:{tls_server.port}{ws_path}", ssl=ca_context, open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "You: hello"


def test_explicit_certificate_flags(ca: trustme.CA, ca_context: ssl.SSLContext, tmp_path: Path) -> None:
    write_pair(ca, tmp_path / "a.pem", tmp_path / "a.key")
    s = SecServer(tmp_path / "data", env={"CWEB_API_KEY": API_KEY}, args=["--tls-cert", str(tmp_path / "a.pem"), "--tls-key", str(tmp_path / "a.key")])
    s.scheme, s.verify = "https", ca_context
    s.start()
    try:
        with s.client() as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/modules", headers=auth()).status_code == 200
    finally:
        s.stop()


@pytest.mark.parametrize(
    "args",
    [["--tls-cert", "{d}/a.pem"], ["--tls-cert", "{d}/missing.pem", "--tls-key", "{d}/missing.key"], ["--tls-cert", "{d}/a.key", "--tls-key", "{d}/a.key"]],
    ids=["cert-without-key", "missing-files", "key-as-cert"],
)
def test_unusable_tls_settings_stop_the_start(ca: trustme.CA, tmp_path: Path, args: list[str]) -> None:
    write_pair(ca, tmp_path / "a.pem", tmp_path / "a.key")
    proc = subprocess.run(
        [sys.executable, "-m", "api", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"), *[a.format(d=tmp_path) for a in args]],
        cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode != 0
    assert "TLS" in proc.stderr or "certificate" in proc.stderr, proc.stderr


def test_half_a_pair_in_the_working_directory_stops_the_start(ca: trustme.CA, tmp_path: Path) -> None:
    write_pair(ca, tmp_path / "server.crt", tmp_path / "other.key")
    proc = subprocess.run(
        [sys.executable, "-m", "api", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")],
        cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode != 0 and "server.key" in proc.stderr
