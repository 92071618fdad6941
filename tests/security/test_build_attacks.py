"""Attacks at build time: reading host files into the build, exhausting the
compiler, smuggling flags through names and fields, running code at build."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import route_module, unique
from tests.security.conftest import API_KEY, SecServer, auth, module

# The compile's own limits (builder/limits.py): wall time 20 s, then answers.
BUILD_DEADLINE_S = 45


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, str]:
    """A host file the server's user can read, holding a unique string that
    would show up in gcc's diagnostics (an unknown type name) if included."""
    token = f"CANARY_{uuid.uuid4().hex}"
    path = tmp_path / "secret.h"
    path.write_text(f"{token} leaked_value;\n")
    return path, token


def assert_canary_nowhere(s: SecServer, response: httpx.Response, token: str) -> None:
    assert token not in response.text, "the canary reached the response"
    for path, data in s.store_bytes():
        assert token.encode() not in data, f"the canary reached {path}"
    assert token not in s.logs(), "the canary reached the server log"


@pytest.mark.usefixtures("needs_sandbox")
def test_include_of_a_host_file(healthy: SecServer, canary: tuple[Path, str]) -> None:
    path, token = canary
    src = route_module(unique("inc"), f"/{unique('inc')}", extra=f'#include "{path}"')
    r = healthy.deploy(src)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "compile_failed"
    assert any("No such file" in d["message"] for d in body["diagnostics"]), body
    assert_canary_nowhere(healthy, r, token)


@pytest.mark.usefixtures("needs_sandbox")
def test_include_through_relative_traversal(healthy: SecServer, canary: tuple[Path, str]) -> None:
    path, token = canary
    rel = "../" * 12 + str(path).lstrip("/")
    r = healthy.deploy(route_module(unique("trav"), f"/{unique('trav')}", extra=f'#include "{rel}"'))
    assert r.status_code == 422, r.text
    assert_canary_nowhere(healthy, r, token)


@pytest.mark.usefixtures("needs_sandbox")
def test_incbin_of_a_host_file(healthy: SecServer, canary: tuple[Path, str]) -> None:
    path, token = canary
    name = unique("incbin")
    route = f"/{unique('incbin')}"
    extra = (
        '__asm__(".section .rodata\\n.global cweb_leak\\ncweb_leak:\\n'
        f'.incbin \\"{path}\\"\\n.byte 0\\n.previous");\n'
        "extern const char cweb_leak[];\n"
    )
    body = '    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", cweb_leak); res->status = HTTP_200_OK; return 0;'
    r = healthy.deploy(module(name, [(route, "leak", body)], extra=extra))
    assert r.status_code == 422, r.text
    if r.status_code == 200:  # pragma: no cover - only if the sandbox failed
        assert token not in healthy.get(route).text
    assert_canary_nowhere(healthy, r, token)


@pytest.mark.usefixtures("needs_sandbox")
def test_include_of_a_host_secret_directory(healthy: SecServer) -> None:
    # /etc, /root and the data dir are not in the jail at all.
    for target in ("/etc/shadow", "/etc/passwd", "/root/.bashrc", str(healthy.data_dir / "registry.db")):
        r = healthy.deploy(route_module(unique("etc"), f"/{unique('etc')}", extra=f'#include "{target}"'))
        assert r.status_code == 422, (target, r.text)
        assert any("No such file" in d["message"] for d in r.json()["diagnostics"]), (target, r.text)


def test_include_dev_zero_ends_within_the_limits(healthy: SecServer) -> None:
    t0 = time.monotonic()
    r = healthy.deploy(route_module(unique("zero"), f"/{unique('zero')}", extra='#include "/dev/zero"'))
    elapsed = time.monotonic() - t0
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"] in ("compile_failed", "compile_timeout"), r.text
    assert elapsed < BUILD_DEADLINE_S
    assert len(r.content) < 256 << 10, "diagnostics must stay capped"


def test_preprocessor_expansion_bomb(healthy: SecServer) -> None:
    # 10^10 tokens once expanded: only the compile's memory/time limits end it.
    defs = ["#define A0 +1+1+1+1+1+1+1+1+1+1"]
    defs += [f"#define A{i} A{i-1} A{i-1} A{i-1} A{i-1} A{i-1} A{i-1} A{i-1} A{i-1} A{i-1} A{i-1}" for i in range(1, 10)]
    extra = "\n".join(defs) + "\nint cweb_bomb(void) { return 0 A9; }\n"
    t0 = time.monotonic()
    r = healthy.deploy(route_module(unique("ppbomb"), f"/{unique('ppbomb')}", extra=extra))
    elapsed = time.monotonic() - t0
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"] in ("compile_failed", "compile_timeout"), r.text
    assert elapsed < BUILD_DEADLINE_S
    assert len(r.content) < 256 << 10


EVIL_NAMES = [
    "-fplugin=evil.so",
    "--wrapper",
    "-wrapper,/bin/sh,-c,touch /tmp/cweb-pwned",
    "-o/tmp/cweb-pwned.so",
    "@/etc/passwd",
    "../../x.c",
    "..",
    "$(touch /tmp/cweb-pwned).c",
    "a;touch /tmp/cweb-pwned;.c",
]


@pytest.mark.parametrize("filename", EVIL_NAMES)
def test_file_names_cannot_inject_flags(healthy: SecServer, filename: str, tmp_path: Path) -> None:
    name = unique("fname")
    route = f"/{unique('fname')}"
    r = healthy.deploy(route_module(name, route, "named"), filename=filename)
    assert r.status_code == 200, r.text
    assert healthy.get(route).text == "named"
    assert not Path("/tmp/cweb-pwned").exists()
    assert not Path("/tmp/cweb-pwned.so").exists()
    # Nothing was written next to the data dir or the working directory.
    assert not (healthy.data_dir.parent / "x.c").exists()
    assert not (healthy.data_dir / "x.c").exists()


def _raw_multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"cwebboundary") -> tuple[bytes, dict]:
    body = b""
    for disposition, data in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\nContent-Type: text/x-c\r\n\r\n" + data + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    return body, {"Content-Type": "multipart/form-data; boundary=" + boundary.decode(), **auth()}


@pytest.mark.parametrize(
    "disposition",
    [
        b'form-data; name="code"; filename="evil\nname.c"',
        b'form-data; name="code"; filename="evil\r\n-fplugin=x.so.c"',
        b'form-data; name="code"; filename="\xff\xfe.c"',
        b'form-data; name="code"; filename="' + b"A" * 5000 + b'.c"',
    ],
)
def test_hostile_file_names_in_raw_multipart(healthy: SecServer, disposition: bytes) -> None:
    route = f"/{unique('raw')}"
    body, headers = _raw_multipart([(disposition, route_module(unique("raw"), route, "raw").encode())])
    with healthy.client() as c:
        r = c.post("/mgnt", content=body, headers=headers)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert healthy.get(route).text == "raw"
    else:
        assert r.json()["error"] in ("malformed_upload", "bad_request", "missing_code")


def test_extra_fields_are_ignored(healthy: SecServer) -> None:
    src = route_module(unique("fields"), f"/{unique('fields')}", "fields")
    plain = healthy.deploy(src)
    assert plain.status_code == 200, plain.text
    with healthy.client() as c:
        r = c.post(
            "/mgnt",
            params={"flags": "-fplugin=/tmp/evil.so", "cflags": "-wrapper,/bin/sh", "cc": "/bin/sh"},
            data={
                "flags": "-fplugin=/tmp/evil.so",
                "cflags": "-wrapper /bin/sh",
                "args": "--help",
                "compiler": "/bin/sh",
                "output": "../../evil.so",
                "filename": "-fplugin=evil.so",
                "name": "../../escape",
            },
            files={"code": ("module.c", src.encode(), "text/x-c")},
            headers=auth(),
        )
    assert r.status_code == 200, r.text
    # Reproducible builds: the same source gives the same artifact, so no field changed the build.
    assert r.json()["module_hash"] == plain.json()["module_hash"]
    assert r.json()["build_key"] == plain.json()["build_key"]


def test_constructor_does_not_run_at_build_time(healthy: SecServer, tmp_path: Path) -> None:
    marker = tmp_path / "constructor-ran"
    extra = (
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void cweb_evil(void) {\n"
        f'    FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("pwned", f); fclose(f); }}\n'
        '    FILE *g = fopen("/usr/cweb-pwned", "w"); if (g) fclose(g);\n'
        "}\n"
    )
    src = route_module(unique("ctor"), f"/{unique('ctor')}", "ctor", extra=extra)
    with healthy.client() as c:
        r = c.post("/mgnt", params={"check": 1}, files={"code": ("ctor.c", src.encode(), "text/x-c")}, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json().get("ok") is True
    assert not marker.exists(), "module code ran while building"
    assert not Path("/usr/cweb-pwned").exists()


def test_deploy_check_needs_the_key_too(healthy: SecServer) -> None:
    with healthy.client() as c:
        r = c.post("/mgnt", params={"check": 1}, files={"code": ("m.c", b"int x;", "text/x-c")})
    assert r.status_code == 401
    assert API_KEY not in r.text


@pytest.mark.parametrize("target", ["/proc/self/environ", "/proc/1/environ", "/proc/self/cmdline"])
def test_include_of_process_environments_shows_no_secret(healthy: SecServer, target: str) -> None:
    # procfs files report size 0, so gcc may read nothing at all (and deploy); either way no secret.
    r = healthy.deploy(route_module(unique("env"), f"/{unique('env')}", extra=f'#include "{target}"'))
    assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
    assert API_KEY not in r.text and "CWEB_API_KEY" not in r.text
