"""Honest feedback from a real server (issue 18): rejected deploys are
recorded as rejections, `?check=1` is the server's own validation, crashes
name their signal, route and backtrace, route paths that would 404 forever
are refused. Every module is real C compiled by gcc, run in real workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import HANDLER, ROOT, Server, module, route_module, unique, wait_for

CRASH_CODE = HANDLER.format(fn="boom") + """ {
    (void)ctx; (void)req; (void)res;
    printf("about to crash\\n");
    fflush(stdout);
    volatile int *p = (int *)0;
    *p = 1;
    return 0;
}
"""


def builds(server: Server) -> list[dict]:
    with server.client() as c:
        return c.get("/_cweb/builds").json()["builds"]


def module_logs(server: Server, name: str) -> list[dict]:
    with server.client() as c:
        return c.get(f"/modules/{name}/logs").json()["lines"]


def test_rejected_deploys_are_recorded_and_logged_as_rejections(server: Server) -> None:
    """A route conflict, a reserved path, a bad regex and a missing config all
    compile, and each is recorded in /_cweb/builds and the server log as
    `rejected` with its code, never as `compiled`."""
    owner = unique("own")
    assert 200 == server.deploy(route_module(owner, f"/{owner}")).status_code
    cases = {
        "route_conflict": (409, route_module(unique("thief"), f"/{owner}")),
        "reserved_path": (422, route_module(unique("res"), "/metrics/x")),
        "invalid_regex": (422, route_module(unique("rx"), "/a/(b")),
        "missing_config": (422, "#include <cweb.h>\nint nothing_here = 1;\n"),
    }
    for code, (status, source) in cases.items():
        filename = f"{code}.c"
        r = server.deploy(source, filename)
        assert (status, code) == (r.status_code, r.json()["error"]), r.text
        newest = builds(server)[0]
        assert (filename, "rejected", code) == (newest["file"], newest["outcome"], newest["error"]), newest
        assert newest["built"] in ("compiled", "cache_hit") and newest["module_hash"]
        assert wait_for(lambda f=filename, c=code: f"build rejected {f}: {c}" in server.logs(), 5), server.logs()[-2000:]
    compiled_lines = [ln for ln in server.logs().splitlines() if "build compiled" in ln and any(f"{c}.c" in ln for c in cases)]
    assert [] == compiled_lines


def test_check_runs_the_servers_validation_without_activating(server: Server) -> None:
    """?check=1 refuses what a deploy would refuse (conflict with an active
    module, bad regex, no config), answers the routes of a good module, and
    activates nothing."""
    owner = unique("chk")
    assert 200 == server.deploy(route_module(owner, f"/{owner}")).status_code
    refused = {
        "route_conflict": route_module(unique("thief"), f"/{owner}"),
        "invalid_regex": route_module(unique("rx"), "/a/(b"),
        "missing_config": "#include <cweb.h>\nint nothing_here = 1;\n",
    }
    for code, source in refused.items():
        r = server.deploy(source, params={"check": 1})
        assert code == r.json()["error"], r.text
        assert builds(server)[0]["check"] is True
    fresh = unique("fresh")
    r = server.deploy(route_module(fresh, f"/{fresh}/[0-9]+"), params={"check": 1})
    assert 200 == r.status_code, r.text
    body = r.json()
    assert (True, fresh, [{"method": "GET", "path": f"/{fresh}/[0-9]+"}]) == (body["ok"], body["name"], body["routes"])
    with server.client() as c:
        assert 404 == c.get(f"/modules/{fresh}").status_code, "a check activates nothing"
        assert 404 == c.get(f"/{fresh}/1").status_code


def test_crashing_onload_answers_with_its_output_signal_and_backtrace(server: Server, tmp_path: Path) -> None:
    name = unique("onl")
    code = """
static void start(struct cweb_context *ctx) {
    (void)ctx;
    printf("opening the database\\n");
    fprintf(stderr, "about to fail\\n");
    volatile int *p = (int *)0;
    *p = 1;
}
""" + HANDLER.format(fn="ok") + " { (void)ctx; (void)req; res->status = HTTP_200_OK; return 0; }\n"
    r = server.deploy(module(name, [(f"/{name}", "GET", "ok")], code, extra=".onload = start,"), "onl.c")
    assert 422 == r.status_code, r.text
    body = r.json()
    assert ("onload_crashed", "SIGSEGV") == (body["error"], body["signal"])
    out = "\n".join(body["output"])
    assert "stdout: opening the database" in out and "stderr: about to fail" in out, out
    assert "cweb: fatal signal SIGSEGV (11) in onload" in out, out
    assert "cweb: backtrace" in out, out
    newest = builds(server)[0]
    assert ("rejected", "onload_crashed") == (newest["outcome"], newest["error"])
    # The CLI keeps what onload printed, the crash report last.
    src = tmp_path / "onl.c"
    src.write_text(module(name, [(f"/{name}", "GET", "ok")], code, extra=".onload = start,"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    cli = subprocess.run([sys.executable, str(ROOT / "cweb"), "--server", server.url, "--no-color", "deploy", str(src)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert 1 == cli.returncode
    assert "module output before the crash:" in cli.stderr and "  stdout: opening the database" in cli.stderr, cli.stderr
    assert "  stderr: cweb: fatal signal SIGSEGV (11) in onload" in cli.stderr
    assert "onload_crashed: onload crashed (SIGSEGV)" in cli.stderr


def test_a_crashing_route_leaves_signal_route_and_backtrace_in_the_module_log(server: Server) -> None:
    name = unique("crash")
    path = f"/{name}/[0-9]+"
    assert 200 == server.deploy(module(name, [(path, "GET", "boom")], CRASH_CODE)).status_code, "deploy"
    with server.client() as c:
        assert 502 == c.get(f"/{name}/7").status_code

    def crash_logged() -> bool:
        return any(e["stream"] == "cweb" and "worker exited: SIGSEGV (signal 11)" in e["line"] for e in module_logs(server, name))

    assert wait_for(crash_logged, 10), module_logs(server, name)
    lines = [e["line"] for e in module_logs(server, name)]
    text = "\n".join(lines)
    assert "about to crash" in text
    assert f"cweb: fatal signal SIGSEGV (11) in GET {path}" in text, text
    trace = lines[lines.index("cweb: backtrace (newest first):") + 1 :]
    assert any("[0x" in t for t in trace), text


def test_route_placeholders_are_refused_with_the_regex_to_use(server: Server) -> None:
    for path in ("/items/:id", "/items/<id>", "/items/{id}"):
        r = server.deploy(route_module(unique("ph"), path))
        body = r.json()
        assert (422, "route_placeholder") == (r.status_code, body["error"]), r.text
        assert "/items/[^/]+" in body["message"], body


def test_handler_with_the_wrong_signature_is_refused_at_build(server: Server) -> None:
    name = unique("sig")
    source = f"""#include <cweb.h>
static int wrong(http_request_t *req) {{ (void)req; return 0; }}
export module_t config = {{
    .name = "{name}", .author = "tests",
    .routes = {{ {{"/{name}", "GET", wrong, NONE}} }}, .size = 1,
}};
"""
    r = server.deploy(source, "sig.c")
    assert (422, "compile_failed") == (r.status_code, r.json()["error"]), r.text
    diags = [d for d in r.json()["diagnostics"] if d["severity"] == "error"]
    assert diags and diags[0]["file"] == "sig.c" and diags[0]["line"] == 5, diags
    assert "incompatible-pointer-types" in diags[0]["message"] or "incompatible pointer type" in diags[0]["message"], diags


def test_routes_declared_without_size_are_refused(server: Server) -> None:
    name = unique("nosize")
    source = route_module(name, f"/{name}").replace(".size = 1,", "")
    r = server.deploy(source)
    body = r.json()
    assert (422, "missing_size") == (r.status_code, body["error"]), r.text
    assert ".size = 1" in body["message"], body
