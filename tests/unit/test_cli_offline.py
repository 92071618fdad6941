"""The `cweb` command-line client, run as users run it: a subprocess.

Each test starts `cweb` with an isolated interpreter (`-I -S`: no site
packages, no PYTHON* variables) and a near-empty environment, which proves the
script needs nothing but the standard library. Where a server is needed, a
real HTTP server on 127.0.0.1 (``Peer``) records what it received and answers
with the JSON the cweb API documents.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import http.server
import io
import json
import os
import pty
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CWEB = Path(__file__).resolve().parents[2] / "cweb"
HASH_A = "a1b2c3d4e5f6" + "0" * 52
HASH_B = "a1b2ffffffff" + "1" * 52
HASH_C = "c0ffee000000" + "2" * 52


# --------------------------------------------------------------------------
# a real HTTP peer


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.path.partition("?")[2]))

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    stream: list[Any] | None = None  # newline-delimited JSON, then close
    content_type: str = "application/json"


Responder = Callable[[Seen], Reply]


@dataclass
class Peer:
    """A tiny HTTP server that answers from a table and records each request."""

    routes: dict[tuple[str, str], Reply | Responder] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def on(self, method: str, path: str, reply: Reply | Responder) -> None:
        """Answer ``method path`` (query string included or not) with ``reply``."""
        self.routes[(method, path)] = reply

    def find(self, request: Seen) -> Reply:
        reply = self.routes.get((request.method, request.path)) or self.routes.get((request.method, request.route))
        if reply is None:
            return Reply(404, {"error": "not_found", "message": f"no route {request.method} {request.path}"})
        return reply(request) if callable(reply) else reply


def make_handler(peer: Peer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Seen(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length),
            )
            peer.seen.append(request)
            reply = peer.find(request)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            if reply.stream is not None:
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                for item in reply.stream:
                    self.wfile.write(json.dumps(item).encode() + b"\n")
                    self.wfile.flush()
                return
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = handle_any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def serve(peer: Peer, tls: ssl.SSLContext | None = None) -> Iterator[Peer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), make_handler(peer))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls else "http"
    peer.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    yield from serve(Peer())


@pytest.fixture
def dead_url() -> str:
    """A URL nobody listens on: a port we bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------
# running cweb


def run_cweb(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ./cweb in an isolated interpreter with only PATH (plus ``env``) set."""
    return subprocess.run(
        [sys.executable, "-I", "-S", str(CWEB), *args],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_cweb_on_tty(*args: str, cwd: Path, timeout: float = 20) -> tuple[int, str]:
    """Run ./cweb with stdout and stderr on a pseudo-terminal; return (rc, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(CWEB), *args],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError("cweb produced no output on the tty in time")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=timeout), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def parse_multipart(request: Seen) -> dict[str, tuple[str | None, bytes]]:
    """Decode a multipart/form-data body with the stdlib email parser."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + request.body, policy=email.policy.HTTP)
    assert message.is_multipart()
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = (part.get_filename(), part.get_payload(decode=True))
    return fields


def deployed(name: str = "hello", module_hash: str = HASH_A, **extra: Any) -> dict[str, Any]:
    """A deploy answer shaped as the API documents it."""
    info = {
        "name": name,
        "author": "me",
        "module_hash": module_hash,
        "source_sha256": "5" * 64,
        "build_key": "b" * 64,
        "routes": [{"method": "GET", "path": "/hello"}, {"method": "POST", "path": "/hello/echo"}],
        "websockets": [{"path": "/chat/ws"}],
        "jobs": [{"name": "resize"}],
        "cache_hit": True,
        "build_ms": 0.4,
        "deploy_ms": 12.5,
        "noop": False,
        "previous_hash": None,
        "warnings": [],
    }
    info.update(extra)
    return info


COMPILE_FAILED = {
    "error": "compile_failed",
    "message": "gcc failed with 1 error",
    "diagnostics": [
        {"file": "/build/tmp/hello.c", "line": 3, "column": 5, "severity": "error", "message": "expected ';' before 'return'"},
        {"file": "cweb.h", "line": 10, "column": 1, "severity": "note", "message": "in expansion of macro"},
    ],
    "log": "hello.c:3:5: error: expected ';' before 'return'\n",
}


# --------------------------------------------------------------------------
# help, stdlib-only, usage errors, network errors

SUBCOMMANDS = [
    [],
    ["deploy"],
    ["check"],
    ["modules"],
    ["versions"],
    ["rollback"],
    ["rm"],
    ["logs"],
    ["sdk"],
    ["jobs"],
    ["jobs", "submit"],
    ["jobs", "status"],
    ["jobs", "cancel"],
    ["jobs", "list"],
    ["jobs", "watch"],
]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c) or "cweb")
def test_help_exits_zero_for_every_command(command: list[str], tmp_path: Path) -> None:
    """`cweb ... --help` prints usage for the command and exits 0."""
    result = run_cweb(*command, "--help", cwd=tmp_path)
    assert (0, "") == (result.returncode, result.stderr)
    assert result.stdout.startswith("usage: cweb " + " ".join(command))


def test_top_level_help_documents_every_exit_code(tmp_path: Path) -> None:
    """The --help epilog lists exit codes 0 to 4."""
    out = run_cweb("--help", cwd=tmp_path).stdout
    codes = [line.split()[0] for line in out.split("exit codes:", 1)[1].splitlines() if line[:3].strip().isdigit()]
    assert ["0", "1", "2", "3", "4"] == codes


def test_script_imports_only_the_standard_library(tmp_path: Path) -> None:
    """Every module cweb loads is part of the standard library."""
    probe = (
        "import runpy, sys, json\n"
        f"sys.argv = ['cweb', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(CWEB)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "print(json.dumps(sorted(t for t in top if t != '__main__' and t not in sys.stdlib_module_names)), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert 0 == result.returncode
    assert [] == json.loads(result.stderr.strip().splitlines()[-1])


def test_script_is_executable_with_env_python3_shebang() -> None:
    """The file starts with the portable shebang and has its execute bit set."""
    assert CWEB.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(CWEB, os.X_OK)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["jobs"],
        ["rollback"],
        ["init", "-bad"],
        ["deploy", "missing.c"],
        ["deploy"],  # no FILE and no routes.ini
        ["check"],
        ["logs", "hello", "-n", "-1"],
        ["logs", "hello", "-n", "many"],
        ["rollback", "hello", "not-hex!"],
        ["jobs", "submit", "img", "resize", "--payload", "{not json"],
        ["jobs", "submit", "img", "resize", "--payload", "[1, 2]"],
        ["jobs", "list", "--state", "sleeping"],
        ["--cacert", "no-such.pem", "modules"],
    ],
    ids=lambda a: " ".join(a) or "no-args",
)
def test_usage_errors_exit_2_without_contacting_the_server(args: list[str], tmp_path: Path, dead_url: str) -> None:
    """Bad arguments exit 2 before any connection (a connection would exit 3)."""
    result = run_cweb("--server", dead_url, *args, cwd=tmp_path)
    assert 2 == result.returncode, result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_server_url_is_a_usage_error(tmp_path: Path) -> None:
    """A non-http(s) URL exits 2 with a message naming it."""
    result = run_cweb("--server", "ftp://example.org", "modules", cwd=tmp_path)
    assert (2, "cweb: invalid server URL 'ftp://example.org': expected http://HOST:PORT or https://...\n") == (
        result.returncode,
        result.stderr,
    )


def test_unreachable_server_exits_3_with_one_line(tmp_path: Path, dead_url: str) -> None:
    """Connection refused prints one line naming the server, no traceback."""
    (tmp_path / "hello.c").write_text("int x;\n")
    for args in (["modules"], ["deploy", "hello.c"], ["jobs", "watch", "u1"], ["logs", "hello", "-f"]):
        result = run_cweb("--server", dead_url, *args, cwd=tmp_path)
        assert 3 == result.returncode, args
        assert [f"cweb: cannot reach {dead_url}: connection refused (is the server running?)"] == result.stderr.splitlines()
        assert "" == result.stdout


def test_answer_that_is_not_json_exits_3(peer: Peer, tmp_path: Path) -> None:
    """Pointing cweb at some other web server is reported, not crashed on."""
    peer.on("GET", "/modules", Reply(200, b"<html>hi</html>", content_type="text/html"))
    result = run_cweb("--server", peer.url, "modules", cwd=tmp_path)
    assert 3 == result.returncode
    assert "is this a cweb server?" in result.stderr


# --------------------------------------------------------------------------
# deploy and check


def test_deploy_uploads_file_as_multipart_field_code(peer: Peer, tmp_path: Path) -> None:
    """The body holds field `code` with the file's exact bytes and basename."""
    source = b'#include <cweb.h>\r\nconst char *s = "\xc3\xa9";\n/* --cweb- */\xff\n'
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "hello.c").write_bytes(source)
    peer.on("POST", "/mgnt", Reply(200, deployed()))

    result = run_cweb("--server", peer.url, "deploy", "src/hello.c", cwd=tmp_path)

    assert (0, "") == (result.returncode, result.stderr)
    [request] = peer.seen
    assert ("POST", "/mgnt") == (request.method, request.path)
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert {"code": ("hello.c", source)} == parse_multipart(request)
    assert "authorization" not in request.headers
    line = result.stdout.strip()
    assert line.startswith("deployed hello a1b2c3d4e5f6 ")
    assert "GET /hello, POST /hello/echo; ws /chat/ws; jobs resize" in line
    assert "cache hit" in line and "deploy 12.5 ms" in line
    assert "\x1b[" not in result.stdout  # not a terminal: no colour


def test_multipart_boundary_is_random(peer: Peer, tmp_path: Path) -> None:
    """Two uploads of the same file use different boundaries."""
    (tmp_path / "a.c").write_text("int a;\n")
    peer.on("POST", "/mgnt", Reply(200, deployed()))
    run_cweb("--server", peer.url, "deploy", "a.c", "a.c", cwd=tmp_path)
    first, second = (r.headers["content-type"] for r in peer.seen)
    assert first != second


@pytest.mark.parametrize("how", ["flag", "env"])
def test_api_key_is_sent_as_bearer_header(how: str, peer: Peer, tmp_path: Path) -> None:
    """--api-key or CWEB_API_KEY becomes `Authorization: Bearer KEY`."""
    (tmp_path / "a.c").write_text("int a;\n")
    peer.on("POST", "/mgnt", Reply(200, deployed()))
    if how == "flag":
        result = run_cweb("--server", peer.url, "deploy", "a.c", "--api-key", "s3cret", cwd=tmp_path)
    else:
        result = run_cweb("--server", peer.url, "deploy", "a.c", cwd=tmp_path, env={"CWEB_API_KEY": "s3cret"})
    assert 0 == result.returncode
    assert "Bearer s3cret" == peer.seen[0].headers["authorization"]


def test_compile_error_prints_gcc_style_diagnostics_and_exits_1(peer: Peer, tmp_path: Path) -> None:
    """422 compile_failed: each diagnostic as FILE:LINE:COL: severity: message."""
    (tmp_path / "hello.c").write_text("int main() { return 0 }\n")
    peer.on("POST", "/mgnt", Reply(422, COMPILE_FAILED))

    result = run_cweb("--server", peer.url, "deploy", "hello.c", cwd=tmp_path)

    assert 1 == result.returncode
    lines = result.stderr.splitlines()
    assert "hello.c:3:5: error: expected ';' before 'return'" == lines[0]
    assert "cweb.h:10:1: note: in expansion of macro" == lines[1]
    assert "failed hello.c: compile_failed: gcc failed with 1 error" == lines[2]
    assert "" == result.stdout


def test_compile_error_without_diagnostics_prints_raw_log(peer: Peer, tmp_path: Path) -> None:
    """With no parsed diagnostics, the raw compiler log is shown instead."""
    (tmp_path / "hello.c").write_text("x\n")
    peer.on(
        "POST",
        "/mgnt",
        Reply(
            422, {"error": "compile_failed", "message": "gcc failed", "diagnostics": [], "log": "ld: cannot find -lfoo\ncollect2: error\n"}
        ),
    )
    result = run_cweb("--server", peer.url, "deploy", "hello.c", cwd=tmp_path)
    assert 1 == result.returncode
    assert ["ld: cannot find -lfoo", "collect2: error", "failed hello.c: compile_failed: gcc failed"] == result.stderr.splitlines()


def test_deploy_goes_on_after_a_refused_file_and_exits_1(peer: Peer, tmp_path: Path) -> None:
    """A conflict on the first file does not stop the second from deploying."""
    (tmp_path / "a.c").write_text("int a;\n")
    (tmp_path / "b.c").write_text("int b;\n")
    answers = iter([Reply(409, {"error": "route_conflict", "message": "GET /hello belongs to module other"}), Reply(200, deployed("b"))])
    peer.on("POST", "/mgnt", lambda request: next(answers))

    result = run_cweb("--server", peer.url, "deploy", "a.c", "b.c", cwd=tmp_path)

    assert 1 == result.returncode
    assert ["a.c", "b.c"] == [parse_multipart(r)["code"][0] for r in peer.seen]
    assert "failed a.c: route_conflict: GET /hello belongs to module other" in result.stderr
    assert "1 of 2 files failed" in result.stderr
    assert result.stdout.startswith("deployed b ")


def test_deploy_prints_warnings_and_noop(peer: Peer, tmp_path: Path) -> None:
    """Warnings are shown as diagnostics; redeploying the active hash says so."""
    (tmp_path / "hello.c").write_text("int a;\n")
    warning = {"file": "hello.c", "line": 1, "column": 5, "severity": "warning", "message": "unused variable 'a'"}
    peer.on("POST", "/mgnt", Reply(200, deployed(noop=True, warnings=[warning])))
    result = run_cweb("--server", peer.url, "deploy", "hello.c", cwd=tmp_path)
    assert 0 == result.returncode
    assert "hello.c:1:5: warning: unused variable 'a'\n" == result.stderr
    assert "unchanged hello a1b2c3d4e5f6 is already active\n" == result.stdout


@pytest.mark.parametrize("status", [401, 403])
def test_authentication_failure_exits_4(status: int, peer: Peer, tmp_path: Path) -> None:
    """401/403 stop at once with exit 4 and a hint about the API key."""
    (tmp_path / "a.c").write_text("int a;\n")
    (tmp_path / "b.c").write_text("int b;\n")
    peer.on("POST", "/mgnt", Reply(status, {"error": "unauthorized", "message": "missing or wrong API key"}))
    result = run_cweb("--server", peer.url, "deploy", "a.c", "b.c", cwd=tmp_path)
    assert 4 == result.returncode
    assert 1 == len(peer.seen)
    assert [
        f"cweb: authentication failed ({status}): unauthorized: missing or wrong API key; pass --api-key or set CWEB_API_KEY"
    ] == result.stderr.splitlines()


def test_json_flag_prints_the_servers_json(peer: Peer, tmp_path: Path) -> None:
    """--json output parses back to exactly what the server sent."""
    (tmp_path / "hello.c").write_text("int a;\n")
    peer.on("POST", "/mgnt", Reply(200, deployed()))
    result = run_cweb("--server", peer.url, "--json", "deploy", "hello.c", cwd=tmp_path)
    assert 0 == result.returncode
    assert deployed() == json.loads(result.stdout)


def test_json_flag_prints_compile_error_json(peer: Peer, tmp_path: Path) -> None:
    """A refusal in --json mode is the server's error document on stdout."""
    (tmp_path / "hello.c").write_text("int a\n")
    peer.on("POST", "/mgnt", Reply(422, COMPILE_FAILED))
    result = run_cweb("--server", peer.url, "deploy", "hello.c", "--json", cwd=tmp_path)
    assert 1 == result.returncode
    assert COMPILE_FAILED == json.loads(result.stdout)


def test_check_compiles_without_deploying(peer: Peer, tmp_path: Path) -> None:
    """`cweb check` posts to /mgnt?check=1 (the server's dry run) and reports what would deploy."""
    (tmp_path / "hello.c").write_text("int a;\n")
    peer.on("POST", "/mgnt?check=1", Reply(200, {"ok": True, "module_hash": HASH_A, "warnings": [], "name": "hello",
                                                  "routes": [{"method": "GET", "path": "/hello"}]}))
    result = run_cweb("--server", peer.url, "check", "hello.c", cwd=tmp_path)
    assert (0, "ok hello.c would deploy as hello (a1b2c3d4e5f6, GET /hello, 0 warnings)\n") == (result.returncode, result.stdout)
    assert ["/mgnt?check=1"] == [r.path for r in peer.seen]


def test_check_failure_exits_1(peer: Peer, tmp_path: Path) -> None:
    (tmp_path / "hello.c").write_text("int a\n")
    peer.on("POST", "/mgnt?check=1", Reply(422, COMPILE_FAILED))
    result = run_cweb("--server", peer.url, "check", "hello.c", cwd=tmp_path)
    assert 1 == result.returncode
    assert result.stderr.startswith("hello.c:3:5: error: expected ';' before 'return'\n")


# --------------------------------------------------------------------------
# routes.ini and server selection

ROUTES_INI = """\
# cweb project
server_url = {url}/mgnt

[modules]
; the counter first
src/counter.c

# blank lines and comments are ignored
hello.c
"""


def make_project(root: Path, url: str) -> Path:
    project = root / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "counter.c").write_text("int counter;\n")
    (project / "hello.c").write_text("int hello;\n")
    (project / "routes.ini").write_text(ROUTES_INI.format(url=url))
    return project


def test_deploy_without_files_uses_routes_ini(peer: Peer, tmp_path: Path) -> None:
    """[modules] entries are deployed in order to the ini's server_url (minus /mgnt)."""
    project = make_project(tmp_path, peer.url)
    peer.on("POST", "/mgnt", Reply(200, deployed()))
    result = run_cweb("deploy", cwd=project)
    assert 0 == result.returncode, result.stderr
    assert ["/mgnt", "/mgnt"] == [r.path for r in peer.seen]
    assert [("counter.c", b"int counter;\n"), ("hello.c", b"int hello;\n")] == [parse_multipart(r)["code"] for r in peer.seen]


def test_routes_ini_paths_are_relative_to_the_ini_not_the_cwd(peer: Peer, tmp_path: Path) -> None:
    """--config elsewhere still finds the modules next to the ini."""
    make_project(tmp_path, peer.url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    peer.on("POST", "/mgnt", Reply(200, deployed()))
    result = run_cweb("--config", str(tmp_path / "project" / "routes.ini"), "deploy", cwd=elsewhere)
    assert 0 == result.returncode, result.stderr
    assert ["counter.c", "hello.c"] == [parse_multipart(r)["code"][0] for r in peer.seen]


def test_routes_ini_missing_module_is_a_usage_error(peer: Peer, tmp_path: Path) -> None:
    """A listed file that does not exist fails before anything is uploaded."""
    project = make_project(tmp_path, peer.url)
    (project / "hello.c").unlink()
    result = run_cweb("deploy", cwd=project)
    assert 2 == result.returncode
    assert "cweb: cannot read hello.c: No such file or directory\n" == result.stderr
    assert [] == peer.seen


def test_malformed_routes_ini_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "routes.ini").write_text("server_url http://x\n")
    result = run_cweb("modules", cwd=tmp_path)
    assert 2 == result.returncode
    assert "routes.ini:1: expected key=value or [section]" in result.stderr


def test_server_flag_beats_env_which_beats_routes_ini(peer: Peer, tmp_path: Path, dead_url: str) -> None:
    """Precedence: --server, then CWEB_SERVER, then routes.ini server_url."""
    peer.on("GET", "/modules", Reply(200, {"modules": []}))
    (tmp_path / "routes.ini").write_text(f"server_url={dead_url}\n")
    assert 3 == run_cweb("modules", cwd=tmp_path).returncode
    assert 0 == run_cweb("modules", cwd=tmp_path, env={"CWEB_SERVER": peer.url + "/mgnt/"}).returncode
    assert 0 == run_cweb("--server", peer.url, "modules", cwd=tmp_path, env={"CWEB_SERVER": dead_url}).returncode
    assert ["/modules", "/modules"] == [r.path for r in peer.seen]


# --------------------------------------------------------------------------
# modules, versions, rollback, rm, logs, sdk

MODULES = {
    "modules": [
        dict(deployed("hello"), deployed_at=1_700_000_000.0, state="active"),
        dict(
            deployed("counter", HASH_C, routes=[{"method": "GET", "path": "/counter"}], websockets=[], jobs=[]),
            deployed_at="2024-01-01T00:00:00Z",
            state="active",
        ),
    ]
}
VERSIONS = {
    "name": "hello",
    "versions": [
        {"module_hash": HASH_A, "source_sha256": "1" * 64, "deployed_at": 1.0, "active": True},
        {"module_hash": HASH_B, "source_sha256": "2" * 64, "deployed_at": 2.0, "active": False},
        {"module_hash": HASH_C, "source_sha256": "3" * 64, "deployed_at": 3.0, "active": False},
    ],
}


def test_modules_lists_each_module_with_short_hash(peer: Peer, tmp_path: Path) -> None:
    peer.on("GET", "/modules", Reply(200, MODULES))
    result = run_cweb("--server", peer.url, "modules", cwd=tmp_path)
    assert 0 == result.returncode
    header, hello, counter = result.stdout.splitlines()
    assert header.split() == ["NAME", "HASH", "STATE", "DEPLOYED", "EXPORTS"]
    assert hello.split()[:3] == ["hello", "a1b2c3d4e5f6", "active"]
    assert counter.split()[:4] == ["counter", "c0ffee000000", "active", "2024-01-01T00:00:00Z"]
    assert counter.endswith("GET /counter")


def test_versions_marks_the_active_one(peer: Peer, tmp_path: Path) -> None:
    peer.on("GET", "/modules/hello/versions", Reply(200, VERSIONS))
    result = run_cweb("--server", peer.url, "versions", "hello", cwd=tmp_path)
    assert 0 == result.returncode
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [["*", HASH_A], [HASH_B], [HASH_C]] == [row[: len(row) - 3] for row in rows]


def test_rollback_expands_a_unique_hash_prefix(peer: Peer, tmp_path: Path) -> None:
    """`cweb rollback hello c0ffee` posts the full hash it resolves to."""
    peer.on("GET", "/modules/hello/versions", Reply(200, VERSIONS))
    peer.on("POST", "/modules/hello/rollback", Reply(200, deployed("hello", HASH_C, previous_hash=HASH_A)))
    result = run_cweb("--server", peer.url, "rollback", "hello", "C0FFEE", cwd=tmp_path)
    assert 0 == result.returncode, result.stderr
    assert {"module_hash": HASH_C} == peer.seen[-1].json()
    assert result.stdout.startswith("rolled back hello c0ffee000000 ")
    assert "replaced a1b2c3d4e5f6" in result.stdout


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("a1b2", "cweb: hash prefix a1b2 is ambiguous for hello: a1b2c3d4e5f6, a1b2ffffffff\n"),
        ("dead", "cweb: no version of hello has a hash starting with dead (see: cweb versions hello)\n"),
    ],
)
def test_rollback_refuses_ambiguous_or_unknown_prefix(prefix: str, message: str, peer: Peer, tmp_path: Path) -> None:
    peer.on("GET", "/modules/hello/versions", Reply(200, VERSIONS))
    result = run_cweb("--server", peer.url, "rollback", "hello", prefix, cwd=tmp_path)
    assert (1, message) == (result.returncode, result.stderr)
    assert ["GET"] == [r.method for r in peer.seen]


def test_rm_deletes_the_module(peer: Peer, tmp_path: Path) -> None:
    peer.on("DELETE", "/modules/hello", Reply(200, {"name": "hello", "removed": True}))
    result = run_cweb("--server", peer.url, "rm", "hello", cwd=tmp_path)
    assert (0, "removed hello\n") == (result.returncode, result.stdout)
    assert [("DELETE", "/modules/hello")] == [(r.method, r.path) for r in peer.seen]


def test_rm_unknown_module_exits_1_with_server_message(peer: Peer, tmp_path: Path) -> None:
    peer.on("DELETE", "/modules/nope", Reply(404, {"error": "module_not_found", "message": "no module named nope"}))
    result = run_cweb("--server", peer.url, "rm", "nope", cwd=tmp_path)
    assert (1, "cweb: module_not_found: no module named nope\n") == (result.returncode, result.stderr)


LOG_LINES = [
    {"ts": 1_700_000_000.0, "stream": "stdout", "module_hash": HASH_A, "line": "hello from onload"},
    {"ts": 1_700_000_001.0, "stream": "stderr", "module_hash": HASH_A, "line": "warning: low disk\n"},
]


def test_logs_asks_for_n_lines_and_prints_them(peer: Peer, tmp_path: Path) -> None:
    peer.on("GET", "/modules/hello/logs", Reply(200, {"lines": LOG_LINES}))
    result = run_cweb("--server", peer.url, "logs", "hello", "-n", "5", cwd=tmp_path)
    assert 0 == result.returncode
    assert {"tail": "5"} == peer.seen[0].query
    first, second = result.stdout.splitlines()
    assert first.endswith(" a1b2c3d4 stdout hello from onload")
    assert second.endswith(" a1b2c3d4 stderr warning: low disk")


def test_logs_follow_prints_streamed_lines(peer: Peer, tmp_path: Path) -> None:
    """-f reads newline-delimited JSON; a stream the server ends is the server going away (exit 3)."""
    peer.on("GET", "/modules/hello/logs", Reply(200, stream=LOG_LINES))
    result = run_cweb("--server", peer.url, "--json", "logs", "hello", "-f", cwd=tmp_path)
    assert 3 == result.returncode
    assert "closed the log stream" in result.stderr
    assert "1" == peer.seen[0].query["follow"]
    assert LOG_LINES == [json.loads(line) for line in result.stdout.splitlines()]


def make_tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue())


def test_sdk_extracts_headers_and_prints_include_flag(peer: Peer, tmp_path: Path) -> None:
    archive = make_tarball({"include/cweb.h": b"#define CWEB 1\n", "include/cweb/jobs.h": b"/* jobs */\n"})
    peer.on("GET", "/sdk.tar.gz", Reply(200, archive, content_type="application/gzip"))
    result = run_cweb("--server", peer.url, "sdk", "-o", "out", cwd=tmp_path)
    assert 0 == result.returncode, result.stderr
    assert f"-I{tmp_path / 'out' / 'include'}\n" == result.stdout
    assert b"#define CWEB 1\n" == (tmp_path / "out" / "include" / "cweb.h").read_bytes()
    assert b"/* jobs */\n" == (tmp_path / "out" / "include" / "cweb" / "jobs.h").read_bytes()


def test_sdk_default_dir_is_cweb_sdk(peer: Peer, tmp_path: Path) -> None:
    peer.on("GET", "/sdk.tar.gz", Reply(200, make_tarball({"cweb.h": b"x"}), content_type="application/gzip"))
    result = run_cweb("--server", peer.url, "sdk", cwd=tmp_path)
    assert (0, f"-I{tmp_path / 'cweb-sdk'}\n") == (result.returncode, result.stdout)


def test_sdk_refuses_entries_that_escape_the_directory(peer: Peer, tmp_path: Path) -> None:
    """A hostile tarball cannot write outside DIR."""
    peer.on("GET", "/sdk.tar.gz", Reply(200, make_tarball({"cweb.h": b"x", "../escaped.h": b"evil"}), content_type="application/gzip"))
    result = run_cweb("--server", peer.url, "sdk", "-o", "out", cwd=tmp_path)
    assert 1 == result.returncode
    assert "refusing unsafe entry in sdk.tar.gz: '../escaped.h'" in result.stderr
    assert not (tmp_path / "escaped.h").exists()
    assert not (tmp_path / "out" / "cweb.h").exists()


# --------------------------------------------------------------------------
# jobs

UUID = "0b7c3e4a-6f0e-4d38-9d2f-2a3f6f1f9a10"


def job(state: str, **extra: Any) -> dict[str, Any]:
    base = {
        "job_uuid": UUID,
        "module": "img",
        "job": "resize",
        "state": state,
        "module_hash": HASH_A,
        "created_at": 1_700_000_000.0,
        "updated_at": 1_700_000_005.0,
        "result": None,
        "error": None,
        "attempts": 1,
    }
    base.update(extra)
    return base


def events(*kinds_and_data: tuple[str, Any]) -> list[dict[str, Any]]:
    return [
        {"job_uuid": UUID, "event_id": i, "ts": 1_700_000_000.0 + i, "type": kind, "data": data}
        for i, (kind, data) in enumerate(kinds_and_data, start=1)
    ]


def test_jobs_submit_sends_module_job_and_options(peer: Peer, tmp_path: Path) -> None:
    """The JSON body carries module, job, payload and the optional limits; stdout is the uuid."""
    peer.on("POST", "/jobs", Reply(200, {"job_uuid": UUID, "state": "pending", "module_hash": HASH_A}))
    result = run_cweb(
        "--server",
        peer.url,
        "jobs",
        "submit",
        "img",
        "resize",
        "--payload",
        '{"w": 64}',
        "--max-attempts",
        "3",
        "--timeout",
        "2.5",
        cwd=tmp_path,
    )
    assert (0, UUID + "\n") == (result.returncode, result.stdout)
    assert {"module": "img", "job": "resize", "payload": {"w": 64}, "max_attempts": 3, "timeout_s": 2.5} == peer.seen[0].json()
    assert "application/json" == peer.seen[0].headers["content-type"]


def test_jobs_submit_payload_from_file(peer: Peer, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"n": [1, 2]}')
    peer.on("POST", "/jobs", Reply(200, {"job_uuid": UUID, "state": "pending", "module_hash": HASH_A}))
    assert 0 == run_cweb("--server", peer.url, "jobs", "submit", "img", "resize", "--payload", "@p.json", cwd=tmp_path).returncode
    assert {"module": "img", "job": "resize", "payload": {"n": [1, 2]}} == peer.seen[0].json()


def test_jobs_submit_watch_prints_result_of_a_done_job(peer: Peer, tmp_path: Path) -> None:
    peer.on("POST", "/jobs", Reply(200, {"job_uuid": UUID, "state": "pending", "module_hash": HASH_A}))
    stream = events(("started", {}), ("progress", {"done": 5, "total": 10}), ("log", "halfway"), ("done", {"ok": True}))
    peer.on("GET", f"/jobs/{UUID}/events", Reply(200, stream=stream))
    peer.on("GET", f"/jobs/{UUID}", Reply(200, job("done", result={"width": 64})))

    result = run_cweb("--server", peer.url, "jobs", "submit", "img", "resize", "--watch", cwd=tmp_path)

    assert 0 == result.returncode, result.stderr
    assert {"since_event_id": "0", "follow": "1"} == peer.seen[1].query
    out = result.stdout
    assert 'progress {"done": 5, "total": 10}' in out  # not a terminal: a plain line, no bar
    assert "log halfway" in out
    assert "state:    done" in out
    assert 'result:   {\n  "width": 64\n}' in out


@pytest.mark.parametrize("final", ["failed", "canceled"])
def test_jobs_watch_exits_1_when_the_job_does_not_succeed(final: str, peer: Peer, tmp_path: Path) -> None:
    peer.on("GET", f"/jobs/{UUID}/events", Reply(200, stream=events(("started", {}), (final, {"error": "boom"}))))
    peer.on("GET", f"/jobs/{UUID}", Reply(200, job(final, error="boom")))
    result = run_cweb("--server", peer.url, "jobs", "watch", UUID, cwd=tmp_path)
    assert 1 == result.returncode
    assert "error:    boom" in result.stdout


def test_jobs_watch_resumes_after_the_last_event_when_the_stream_drops(peer: Peer, tmp_path: Path) -> None:
    """A stream cut before the terminal event is reopened with since_event_id."""
    first, second = events(("started", {}), ("done", {}))
    streams = iter([Reply(200, stream=[first]), Reply(200, stream=[second])])
    peer.on("GET", f"/jobs/{UUID}/events", lambda request: next(streams))
    states = iter(["running", "done"])
    peer.on("GET", f"/jobs/{UUID}", lambda request: Reply(200, job(next(states))))
    result = run_cweb("--server", peer.url, "--json", "jobs", "watch", UUID, cwd=tmp_path)
    assert 0 == result.returncode, result.stderr
    assert [first, second, job("done")] == [json.loads(line) for line in result.stdout.splitlines()]
    event_requests = [r for r in peer.seen if r.route.endswith("/events")]
    assert ["0", "1"] == [r.query["since_event_id"] for r in event_requests]


def test_jobs_watch_draws_a_progress_bar_on_a_terminal(peer: Peer, tmp_path: Path) -> None:
    stream = events(("progress", {"done": 3, "total": 10}), ("progress", {"percent": 100}), ("done", {}))
    peer.on("GET", f"/jobs/{UUID}/events", Reply(200, stream=stream))
    peer.on("GET", f"/jobs/{UUID}", Reply(200, job("done", result=7)))
    rc, output = run_cweb_on_tty("--server", peer.url, "jobs", "watch", UUID, cwd=tmp_path)
    assert 0 == rc
    assert "\r[#########---------------------]  30.0% 3/10" in output
    assert "\r[##############################] 100.0%" in output
    assert "\x1b[32mdone\x1b[0m" in output  # coloured state on a terminal


def test_no_color_flag_disables_colour_on_a_terminal(peer: Peer, tmp_path: Path) -> None:
    peer.on("GET", f"/jobs/{UUID}", Reply(200, job("done")))
    rc, output = run_cweb_on_tty("--server", peer.url, "--no-color", "jobs", "status", UUID, cwd=tmp_path)
    assert 0 == rc
    assert "state:    done" in output
    assert "\x1b[" not in output


def test_jobs_cancel_of_finished_job_exits_1(peer: Peer, tmp_path: Path) -> None:
    peer.on("POST", f"/jobs/{UUID}/cancel", Reply(409, {"error": "job_finished", "message": "job is already done"}))
    result = run_cweb("--server", peer.url, "jobs", "cancel", UUID, cwd=tmp_path)
    assert (1, "cweb: job_finished: job is already done\n") == (result.returncode, result.stderr)


def test_jobs_cancel_prints_new_state(peer: Peer, tmp_path: Path) -> None:
    peer.on("POST", f"/jobs/{UUID}/cancel", Reply(200, {"job_uuid": UUID, "state": "canceled"}))
    result = run_cweb("--server", peer.url, "jobs", "cancel", UUID, cwd=tmp_path)
    assert (0, f"{UUID} canceled\n") == (result.returncode, result.stdout)


def test_jobs_list_passes_filters_and_shows_the_cursor(peer: Peer, tmp_path: Path) -> None:
    peer.on("GET", "/jobs", Reply(200, {"jobs": [job("failed")], "next_cursor": "abc"}))
    result = run_cweb("--server", peer.url, "jobs", "list", "--state", "failed", "--limit", "1", cwd=tmp_path)
    assert 0 == result.returncode
    assert {"state": "failed", "limit": "1"} == peer.seen[0].query
    assert UUID in result.stdout and "img/resize" in result.stdout
    assert "more: cweb jobs list --cursor abc\n" == result.stderr


def test_jobs_status_json(peer: Peer, tmp_path: Path) -> None:
    peer.on("GET", f"/jobs/{UUID}", Reply(200, job("running")))
    result = run_cweb("--server", peer.url, "jobs", "status", UUID, "--json", cwd=tmp_path)
    assert (0, job("running")) == (result.returncode, json.loads(result.stdout))


# --------------------------------------------------------------------------
# https with a self-signed certificate


@pytest.fixture
def tls_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Peer, Path]]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not available to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    for peer in serve(Peer(), tls=context):
        peer.on("GET", "/modules", Reply(200, {"modules": []}))
        yield peer, cert


def test_https_self_signed_needs_cacert(tls_peer: tuple[Peer, Path], tmp_path: Path) -> None:
    """Untrusted certificate: exit 3 with a hint; --cacert or CWEB_CACERT: works."""
    peer, cert = tls_peer
    refused = run_cweb("--server", peer.url, "modules", cwd=tmp_path)
    assert 3 == refused.returncode
    assert 1 == len(refused.stderr.splitlines())
    assert "pass --cacert FILE" in refused.stderr
    assert 0 == run_cweb("--server", peer.url, "--cacert", str(cert), "modules", cwd=tmp_path).returncode
    assert 0 == run_cweb("--server", peer.url, "modules", cwd=tmp_path, env={"CWEB_CACERT": str(cert)}).returncode
    assert 2 == len(peer.seen)


# --------------------------------------------------------------------------
# a server that answers before reading the whole upload


def test_deploy_shows_the_413_of_a_server_that_closed_before_the_body_ended(tmp_path: Path) -> None:
    """A server refusing an upload by its Content-Length answers 413 and
    closes without reading the rest: the client's send fails (broken pipe,
    reset). The CLI shows the server's answer, exit 1, not "cannot reach" (3)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    body = json.dumps({"error": "source_too_large", "message": "the upload exceeds 1114112 bytes"}).encode()
    answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body)
    served = []

    def serve() -> None:
        listener.settimeout(30)
        for _ in range(2):  # urllib's attempt, then the CLI's re-send that reads the answer
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                conn.sendall(answer)
                served.append(head.split(b"\r\n", 1)[0])
                # Closing with unread data makes the kernel send a reset.

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    big = tmp_path / "big.c"
    big.write_bytes(b"/*" + b"x" * (24 << 20) + b"*/\n")
    result = run_cweb("--server", f"127.0.0.1:{port}", "deploy", str(big), cwd=tmp_path, timeout=60)
    listener.close()
    assert 1 == result.returncode, result.stderr
    assert "source_too_large: the upload exceeds 1114112 bytes" in result.stderr
    assert "cannot reach" not in result.stderr
    assert served and all(line.startswith(b"POST /mgnt") for line in served)


def test_version_matches_the_package(tmp_path: Path) -> None:
    import tomllib

    version = tomllib.loads((CWEB.parent / "pyproject.toml").read_text())["project"]["version"]
    result = run_cweb("--version", cwd=tmp_path)
    assert (0, f"cweb {version}\n") == (result.returncode, result.stdout)
