"""Per-module secrets against a real server with an API key (issue 18):
`cweb secret put` (value on stdin), read in C with cweb_secret(), never in
the logs, the store, the registry or the artifact, stored 0600, behind the key.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import HANDLER, ROOT, module, unique, wait_for

CLI = ROOT / "cweb"
KEY = "k-" + "7" * 30


def secret_module(name: str) -> str:
    code = HANDLER.format(fn="show") + """ {
    (void)ctx; (void)req;
    const char *v = cweb_secret("API_TOKEN");
    /* The length only in the log: a test proves the value never gets there. */
    printf("token length %zu\\n", v ? strlen(v) : (size_t)0);
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s|%s", v ? v : "(none)", cweb_secret("MISSING") ? "bad" : "ok");
    res->status = HTTP_200_OK;
    return 0;
}
"""
    return module(name, [(f"/{name}", "GET", "show")], code)


def cli(server, *args: str, stdin: str = "", key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    env["NO_COLOR"] = "1"
    argv = [sys.executable, str(CLI), "--server", server.url, *(["--api-key", key] if key else []), *args]
    return subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True, timeout=120)


def test_secret_put_reaches_the_module_and_nowhere_else(make_server, tmp_path: Path) -> None:
    server = make_server(env={"CWEB_API_KEY": KEY})
    name = unique("sec")
    value = "s3cr3t-" + unique("v")
    r = cli(server, "secret", "put", name, "API_TOKEN", stdin=value + "\n")
    assert 0 == r.returncode, r.stderr
    assert value not in r.stdout + r.stderr
    src = tmp_path / "sec.c"
    src.write_text(secret_module(name))
    assert 0 == cli(server, "deploy", str(src)).returncode
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert f"{value}|ok" == c.get(f"/{name}").text
        assert {"name": name, "keys": ["API_TOKEN"]} == c.get(f"/modules/{name}/secrets", headers=auth).json()
        # Behind the key: listing, writing, deleting.
        assert 401 == c.get(f"/modules/{name}/secrets").status_code
        assert 401 == c.put(f"/modules/{name}/secrets/OTHER", content=b"x").status_code
        assert 401 == c.delete(f"/modules/{name}/secrets/API_TOKEN").status_code
        assert wait_for(lambda: any("token length" in e["line"] for e in
                                    c.get(f"/modules/{name}/logs", headers=auth).json()["lines"]), 10)
        logs = c.get(f"/modules/{name}/logs", headers=auth).text
        everything = [c.get(p, headers=auth).text for p in ("/modules", f"/modules/{name}", f"/modules/{name}/versions",
                                                             "/_cweb/builds", "/_cweb/workers", "/metrics", "/openapi.json")]
    assert value not in logs and not any(value in page for page in everything)
    assert cli(server, "secret", "list", name).stdout.split() == ["API_TOKEN"]
    server.stop()
    data = server.data_dir
    secret_file = data / "secrets" / f"{name}.json"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
    assert value.encode() in secret_file.read_bytes()
    needle = value.encode()
    leaks = [str(p) for p in data.rglob("*") if p.is_file() and p != secret_file and needle in p.read_bytes()]
    assert [] == leaks, "the value is in the store, the registry, jobs or module data"
    assert needle not in server.log_path.read_bytes(), "the value is in the server log"


def test_secret_changes_reach_workers_started_after_and_rm_removes(make_server, tmp_path: Path) -> None:
    server = make_server(env={"CWEB_API_KEY": KEY})
    name = unique("sec2")
    src = tmp_path / "sec.c"
    src.write_text(secret_module(name))
    assert 0 == cli(server, "deploy", str(src)).returncode
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert "(none)|ok" == c.get(f"/{name}").text
        assert 0 == cli(server, "secret", "put", name, "API_TOKEN", stdin="first").returncode
        # The running worker keeps what it started with; a redeploy of a
        # changed source starts a worker that reads the new value.
        assert "(none)|ok" == c.get(f"/{name}").text
        src.write_text(secret_module(name) + "\nint sec_version_two = 2;\n")
        assert 0 == cli(server, "deploy", str(src)).returncode
        assert "first|ok" == c.get(f"/{name}").text
        assert 0 == cli(server, "secret", "rm", name, "API_TOKEN").returncode
        assert 1 == cli(server, "secret", "rm", name, "API_TOKEN").returncode
        bad = c.put(f"/modules/{name}/secrets/not-a-key", content=b"x", headers={"authorization": f"Bearer {KEY}"})
        assert (422, "invalid_key") == (bad.status_code, bad.json()["error"])
        big = c.put(f"/modules/{name}/secrets/BIG", content=b"x" * (65 << 10), headers={"authorization": f"Bearer {KEY}"})
        assert (413, "secret_too_large") == (big.status_code, big.json()["error"])
    assert 2 == cli(server, "secret", "put", name, "EMPTY", stdin="").returncode
