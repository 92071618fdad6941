"""deploy.bat, executed.

There is no cmd.exe here, so ``Batch`` below runs the small subset of batch
syntax deploy.bat is written in, with cmd's rules where they matter: ``%VAR%``
is expanded when a line (or a whole parenthesized block) is read, ``for``
variables and ``call`` arguments when they run, ``if errorlevel N`` means
"exit code >= N", and an unescaped ``)`` inside a block ends the block. Any
construct outside the subset raises ``Unsupported`` so the test fails rather
than guessing. The ``curl.exe`` lines it reaches are run with the real curl
against a real HTTP server on 127.0.0.1, so the test proves the curl
invocation deploy.bat builds actually uploads the files.
"""

from __future__ import annotations

import email
import email.policy
import glob
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DEPLOY_BAT = Path(__file__).resolve().parents[2] / "deploy.bat"
CURL = shutil.which("curl")

pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")


# --------------------------------------------------------------------------
# a batch interpreter for deploy.bat's subset


class Unsupported(Exception):
    """deploy.bat used batch syntax this interpreter does not model."""


class ExitBatch(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


@dataclass
class Batch:
    """Runs a .bat file the way cmd.exe would, for a small subset of syntax."""

    text: str
    env: dict[str, str]
    cwd: Path
    output: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)  # argv of each external command
    errorlevel: int = 0
    run_external: bool = True  # False: record external commands without running them

    def __post_init__(self) -> None:
        self.lines = self.text.splitlines()
        self.env = {k.upper(): v for k, v in self.env.items()}  # cmd variables ignore case

    # reading ------------------------------------------------------------

    def statement_at(self, index: int) -> tuple[str, int]:
        """The logical line starting at ``index`` (a whole ``(...)`` block) and the next index."""
        first = self.lines[index]
        if not first.rstrip().endswith("("):
            return first, index + 1
        depth, end = 1, index + 1
        while depth:
            if end >= len(self.lines):
                raise Unsupported(f"unclosed block starting at line {index + 1}")
            line = self.lines[end].strip()
            if line == ")":
                depth -= 1
            elif line.endswith("("):
                depth += 1
            elif "(" in line or ")" in line:
                raise Unsupported(f"line {end + 1}: a parenthesis inside a block ends or confuses it in cmd.exe: {line!r}")
            end += 1
        return "\n".join(self.lines[index:end]), end

    def expand(self, text: str, args: list[str]) -> str:
        """cmd's read-time percent expansion: %VAR%, %VAR:~a,b%, %1, %~1, %*, %%."""

        def arg(n: int) -> str:
            return args[n - 1] if 0 < n <= len(args) else ""

        out, i = [], 0
        while i < len(text):
            c = text[i]
            if c != "%":
                out.append(c)
                i += 1
                continue
            rest = text[i + 1 :]
            if rest.startswith("%"):
                out.append("%")
                i += 2
            elif rest.startswith("*"):
                out.append(" ".join(args))
                i += 2
            elif re.match(r"~\d", rest):
                out.append(arg(int(rest[1])).strip('"'))
                i += 3
            elif rest[:1].isdigit():
                out.append(arg(int(rest[0])))
                i += 2
            else:
                close = text.find("%", i + 1)
                if close < 0:
                    raise Unsupported(f"lone % in {text!r}")
                out.append(self.variable(text[i + 1 : close]))
                i = close + 1
        return "".join(out)

    def variable(self, spec: str) -> str:
        name, sep, sub = spec.partition(":~")
        value = self.env.get(name.upper())
        if not sep:
            return value or ""
        if value is None:
            raise Unsupported(f"substring of undefined variable {name}")
        start_text, _, length_text = sub.partition(",")
        start = int(start_text)
        value = value[start:] if start >= 0 else value[max(len(value) + start, 0) :]
        if length_text:
            length = int(length_text)
            value = value[:length] if length >= 0 else value[: max(len(value) + length, 0)]
        return value

    # running ------------------------------------------------------------

    def run(self, args: list[str]) -> int:
        """Run the script with command-line ``args`` (quoted as typed); return its exit code."""
        first = self.lines[0].strip().lower()
        if first != "@echo off":
            raise Unsupported("deploy.bat must start with @echo off (else cmd echoes every command)")
        try:
            self.run_from(1, args)
        except ExitBatch as stop:
            return stop.code
        return self.errorlevel

    def run_from(self, index: int, args: list[str]) -> None:
        while index < len(self.lines):
            text, next_index = self.statement_at(index)
            stripped = text.strip()
            if stripped.lower().startswith("goto "):
                index = self.label_index(stripped.split(None, 1)[1])
                continue
            if stripped and not stripped.startswith(":"):
                self.execute(self.expand(text, args), args)
            index = next_index

    def label_index(self, label: str) -> int:
        label = label.lstrip(":").lower()
        if label == "eof":
            return len(self.lines)
        for i, line in enumerate(self.lines):
            if line.strip().lower() == ":" + label:
                return i + 1
        raise Unsupported(f"no label :{label}")

    def execute(self, command: str, args: list[str]) -> None:
        """Run one already-expanded command (maybe a whole block)."""
        command = command.strip().lstrip("@")
        word, _, rest = command.partition(" ")
        keyword = word.lower()
        if keyword == "rem" or not command:
            return
        if re.search(r"[&|<>^]", re.sub(r'"[^"]*"', "", command)):
            raise Unsupported(f"shell operator or escape in {command!r}")
        if keyword == "setlocal":
            return
        if keyword in ("echo.", "echo"):
            self.output.append("" if keyword == "echo." else rest)
            return
        if keyword == "set":
            self.set(rest)
            return
        if keyword == "if":
            self.run_if(rest, args)
            return
        if keyword == "for":
            self.run_for(rest, args)
            return
        if keyword == "call":
            self.call(rest)
            return
        if keyword == "exit":
            match = re.fullmatch(r"/b\s+(\d+)", rest.strip(), re.IGNORECASE)
            if not match:
                raise Unsupported(f"exit without /b N: {command!r}")
            raise ExitBatch(int(match.group(1)))
        if keyword in ("curl", "curl.exe"):
            self.external(command)
            return
        raise Unsupported(f"command {word!r}")

    def set(self, rest: str) -> None:
        if rest.startswith('"'):
            if not rest.rstrip().endswith('"'):
                raise Unsupported(f"set with unbalanced quotes: {rest!r}")
            rest = rest.rstrip()[1:-1]
        name, sep, value = rest.partition("=")
        if not sep or not name:
            raise Unsupported(f"set without NAME=: {rest!r}")
        if value:
            self.env[name.upper()] = value
        else:
            self.env.pop(name.upper(), None)

    def run_if(self, rest: str, args: list[str]) -> None:
        negate = False
        if rest.lower().startswith("not "):
            negate, rest = True, rest[4:].lstrip()
        if rest.lower().startswith("defined "):
            name, _, body = rest[8:].lstrip().partition(" ")
            result = name.upper() in self.env
        elif rest.lower().startswith("errorlevel "):
            number, _, body = rest[11:].lstrip().partition(" ")
            result = self.errorlevel >= int(number)
        else:
            match = re.match(r'("[^"]*"|\S+?)==("[^"]*"|\S+)\s+(.*)', rest, re.DOTALL)
            if not match:
                raise Unsupported(f"if condition {rest!r}")
            result = match.group(1) == match.group(2)
            body = match.group(3)
        if result != negate:
            self.run_body(body, args)
        elif re.search(r"\)\s*else\b", body, re.IGNORECASE):
            raise Unsupported("if ... else")

    def run_body(self, body: str, args: list[str]) -> None:
        body = body.strip()
        if not body.startswith("("):
            self.execute(body, args)
            return
        lines = body.splitlines()
        if lines[-1].strip() != ")":
            raise Unsupported(f"text after a block's closing parenthesis: {lines[-1]!r}")
        for line in lines[1:-1]:
            self.execute(line, args)

    def run_for(self, rest: str, args: list[str]) -> None:
        match = re.fullmatch(r"%(\w) in \((.*)\) do (.+)", rest.strip(), re.DOTALL)
        if not match:
            raise Unsupported(f"for loop {rest!r}")
        var, items, body = match.groups()
        for item in re.findall(r'"[^"]*"|[^\s,;=]+', items):
            names = sorted(glob.glob(item.strip('"'), root_dir=self.cwd)) if any(c in item for c in "*?") else [item]
            for name in names:
                self.execute(body.replace(f"%~{var}", name.strip('"')).replace(f"%{var}", name), args)

    def call(self, rest: str) -> None:
        target, _, arguments = rest.strip().partition(" ")
        if not target.startswith(":"):
            raise Unsupported(f"call of another script: {target!r}")
        call_args = re.findall(r'"[^"]*"|\S+', arguments)
        try:
            self.run_from(self.label_index(target), call_args)
        except ExitBatch as stop:
            self.errorlevel = stop.code

    def external(self, command: str) -> None:
        argv = [token.replace('"', "") for token in re.findall(r'(?:"[^"]*"|[^\s"])+', command)]
        self.commands.append(list(argv))
        if not self.run_external:
            self.errorlevel = 0
            return
        argv[0] = str(CURL)
        env = {"PATH": os.environ["PATH"], **self.env}  # children inherit the script's variables
        done = subprocess.run(argv, cwd=self.cwd, env=env, capture_output=True, timeout=20)
        self.output.extend(done.stdout.decode("utf-8", "replace").splitlines() or [""])
        self.output.extend(done.stderr.decode("utf-8", "replace").splitlines())
        self.errorlevel = done.returncode


def run_deploy_bat(args: list[str], env: dict[str, str], cwd: Path, run_external: bool = True) -> tuple[int, Batch]:
    batch = Batch(DEPLOY_BAT.read_text(), env, cwd, run_external=run_external)
    return batch.run(args), batch


# --------------------------------------------------------------------------
# a real HTTP server that records uploads


@dataclass
class Upload:
    path: str
    headers: dict[str, str]
    filename: str | None
    field: str | None
    content: bytes


@dataclass
class Server:
    url: str = ""
    uploads: list[Upload] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # filenames answered with 422


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            head = f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode()
            message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
            parts = list(message.iter_parts()) if message.is_multipart() else []
            part = parts[0] if len(parts) == 1 else None
            upload = Upload(
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                filename=part.get_filename() if part else None,
                field=part.get_param("name", header="content-disposition") if part else None,
                content=part.get_payload(decode=True) if part else b"",
            )
            state.uploads.append(upload)
            if self.path != "/mgnt" or upload.filename in state.refuse:
                status, answer = 422, {"error": "compile_failed", "message": f"{upload.filename}:1:1: error: nope"}
            else:
                status, answer = 200, {"name": upload.filename, "module_hash": "ab" * 32}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        thread.join()
        httpd.server_close()


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    (tmp_path / "hello.c").write_bytes(b"#include <cweb.h>\r\nint hello;\n")
    (tmp_path / "my counter.c").write_bytes(b"int counter;\n")
    return tmp_path


# --------------------------------------------------------------------------
# tests


def test_no_arguments_prints_usage_and_exits_1(tmp_path: Path) -> None:
    code, batch = run_deploy_bat([], {}, tmp_path)
    assert 1 == code
    assert batch.output[0].startswith("usage: deploy.bat FILE.c")
    assert [] == batch.commands


def test_deploys_every_argument_as_multipart_field_code(server: Server, sources: Path) -> None:
    """Each file, even one with a space in its name, is uploaded as `code`."""
    code, batch = run_deploy_bat(["hello.c", '"my counter.c"'], {"CWEB_SERVER": server.url}, sources)
    assert 0 == code, batch.output
    assert [("/mgnt", "code", "hello.c", b"#include <cweb.h>\r\nint hello;\n"), ("/mgnt", "code", "my counter.c", b"int counter;\n")] == [
        (u.path, u.field, u.filename, u.content) for u in server.uploads
    ]
    assert '{"name": "hello.c", "module_hash": "' + "ab" * 32 + '"}' in batch.output  # the server's answer is shown


def test_wildcards_expand_to_matching_files(server: Server, sources: Path) -> None:
    code, _ = run_deploy_bat(["*.c"], {"CWEB_SERVER": server.url}, sources)
    assert 0 == code
    assert ["hello.c", "my counter.c"] == [u.filename for u in server.uploads]


@pytest.mark.parametrize("suffix", ["", "/", "/mgnt", "/mgnt/"])
def test_server_url_gets_exactly_one_mgnt(suffix: str, server: Server, sources: Path) -> None:
    code, batch = run_deploy_bat(["hello.c"], {"CWEB_SERVER": server.url + suffix}, sources)
    assert 0 == code, batch.output
    assert ["/mgnt"] == [u.path for u in server.uploads]


def test_default_server_is_localhost_8080(tmp_path: Path) -> None:
    """Without CWEB_SERVER curl is pointed at http://localhost:8080/mgnt."""
    (tmp_path / "hello.c").write_text("int x;\n")
    _, batch = run_deploy_bat(["hello.c"], {}, tmp_path, run_external=False)  # a real server may listen there
    assert "http://localhost:8080/mgnt" == batch.commands[0][-1]


def test_api_key_is_sent_as_bearer_header(server: Server, sources: Path) -> None:
    code, _ = run_deploy_bat(["hello.c"], {"CWEB_SERVER": server.url, "CWEB_API_KEY": "k3y"}, sources)
    assert 0 == code
    assert "Bearer k3y" == server.uploads[0].headers.get("authorization")


def test_no_authorization_header_without_api_key(server: Server, sources: Path) -> None:
    run_deploy_bat(["hello.c"], {"CWEB_SERVER": server.url}, sources)
    assert "authorization" not in server.uploads[0].headers


def test_cacert_is_passed_to_curl(server: Server, sources: Path) -> None:
    """CWEB_CACERT becomes `--cacert FILE` (curl ignores it for plain http)."""
    code, batch = run_deploy_bat(["hello.c"], {"CWEB_SERVER": server.url, "CWEB_CACERT": r"C:\certs\server.crt"}, sources)
    assert 0 == code
    argv = batch.commands[0]
    assert r"C:\certs\server.crt" == argv[argv.index("--cacert") + 1]


def test_curl_command_line(sources: Path, server: Server) -> None:
    """The exact argv: silent but showing errors, failing on HTTP errors with the body."""
    _, batch = run_deploy_bat(["hello.c"], {"CWEB_SERVER": server.url, "CWEB_API_KEY": "k"}, sources)
    assert [
        ["curl.exe", "-sS", "--fail-with-body", "-H", "Authorization: Bearer k", "-F", "code=@hello.c", server.url + "/mgnt"]
    ] == batch.commands


def test_a_refused_file_makes_the_script_fail_but_others_still_deploy(server: Server, sources: Path) -> None:
    server.refuse.add("hello.c")
    code, batch = run_deploy_bat(["hello.c", '"my counter.c"'], {"CWEB_SERVER": server.url}, sources)
    assert 1 == code
    assert ["hello.c", "my counter.c"] == [u.filename for u in server.uploads]
    assert any("hello.c:1:1: error: nope" in line for line in batch.output)  # --fail-with-body shows the error
    assert "deploy.bat: hello.c FAILED" in batch.output


def test_missing_file_fails(server: Server, tmp_path: Path) -> None:
    code, batch = run_deploy_bat(["nope.c"], {"CWEB_SERVER": server.url}, tmp_path)
    assert 1 == code
    assert [] == server.uploads


def test_unreachable_server_fails(tmp_path: Path) -> None:
    (tmp_path / "hello.c").write_text("int x;\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _ = run_deploy_bat(["hello.c"], {"CWEB_SERVER": f"http://127.0.0.1:{port}"}, tmp_path)
    assert 1 == code


def test_interpreter_rejects_syntax_it_does_not_model(tmp_path: Path) -> None:
    """The interpreter fails loudly instead of guessing (so the tests above mean something)."""
    for script in ("@echo off\necho a & echo b\ncurl.exe x & y\n", "@echo off\nif 1==1 (\n  echo (x)\n)\n", "@echo off\nstart x\n"):
        with pytest.raises(Unsupported):
            Batch(script, {}, tmp_path).run([])
