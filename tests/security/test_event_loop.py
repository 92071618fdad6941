"""Anonymous clients cannot stall the event loop: while hostile requests are
processed (pathological route regexes, huge forms), a trivial route on the
same server keeps answering within a small bound."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx

from tests.conftest import route_module, unique
from tests.security.conftest import OK_BODY, SENTINEL_PATH, SecServer, auth, module

# The sentinel's worst latency while an attack runs. Generous for a shared,
# loaded 2-core machine; the stalls this guards against were 1-30 s.
STALL_BOUND_S = 0.75


# The sentinel runs in a process of its own: in the test's process it would
# also time the attacking client's own event loop (60 concurrent httpx
# requests cost the client more CPU than the server), not the server's.
SENTINEL_SCRIPT = """
import http.client, json, select, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection(host, port, timeout=30)
latencies = []
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0.02)[0]:
    t0 = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    latencies.append(time.perf_counter() - t0)
    if r.status != 200:
        sys.exit(f"sentinel answered {r.status}: {body[:200]!r}")
print(json.dumps(latencies), flush=True)
"""


def under_attack(s: SecServer, attack) -> tuple[list[float], object]:
    """Run attack(client) while timing the sentinel route; (latencies, attack's result)."""
    url = httpx.URL(s.url)
    probe = subprocess.Popen([sys.executable, "-c", SENTINEL_SCRIPT, url.host, str(url.port), SENTINEL_PATH],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert probe.stdout is not None and probe.stdout.readline().strip() == "ready"
        time.sleep(0.1)

        async def main() -> object:
            async with httpx.AsyncClient(base_url=s.url, timeout=60, limits=httpx.Limits(max_connections=64)) as c:
                return await attack(c)

        result = asyncio.run(main())
        out, _ = probe.communicate("stop\n", timeout=60)
    finally:
        probe.kill()
        probe.wait()
    assert probe.returncode == 0, f"sentinel failed: {out!r}"
    return json.loads(out), result


def test_pathological_route_regex_does_not_stall_the_server(healthy: SecServer) -> None:
    """`/r/(a+)+b` with 30-character paths (seconds each for a backtracking
    engine) hammered concurrently: every request answers 404 at once and the
    sentinel route stays fast."""
    prefix = f"/{unique('re')}"
    r = healthy.deploy(module(unique("regex"), [(prefix + "/(a+)+b", "h", OK_BODY), (prefix + "/n/[[:digit:]]+", "d", OK_BODY)]))
    assert r.status_code == 200, r.text
    evil = prefix + "/" + "a" * 30

    async def attack(c: httpx.AsyncClient) -> list[int]:
        codes: list[int] = []
        for _ in range(5):
            answers = await asyncio.gather(*(c.get(evil) for _ in range(60)))
            codes += [a.status_code for a in answers]
        return codes

    t0 = time.perf_counter()
    latencies, codes = under_attack(healthy, attack)
    elapsed = time.perf_counter() - t0
    assert codes == [404] * 300
    assert latencies and max(latencies) < STALL_BOUND_S, f"sentinel worst {max(latencies):.3f} s"
    assert elapsed < 20, f"300 pathological requests took {elapsed:.1f} s"
    with healthy.client() as c:
        assert c.get(prefix + "/aaab").text == "ok"
        assert c.get(prefix + "/n/2026").text == "ok"
        assert c.get(prefix + "/n/20x6").status_code == 404


FORM_ECHO = r"""
static int form(struct cweb_context *ctx, http_request_t *req, http_response_t *res) {
    (void)ctx;
    const char *last = http_kv_get(req->data, "k999");
    const char *first = http_kv_get(req->data, "k0");
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%zu %zu %.8s", last ? strlen(last) : (size_t)0,
             first ? strlen(first) : (size_t)0, first ? first : "-");
    res->status = HTTP_200_OK;
    return 0;
}
"""


def _form_route(s: SecServer) -> str:
    path = f"/{unique('form')}"
    r = s.deploy(f"#include <cweb.h>\n#include <string.h>\n{FORM_ECHO}\n"
                 f'export module_t config = {{ .name = "{unique("form")}", .routes = {{ {{"{path}", "POST", form, NONE}} }}, .size = 1 }};\n')
    assert r.status_code == 200, r.text
    return path


def _multipart(parts: int, value: bytes) -> tuple[bytes, str]:
    boundary = "cwebB0undary"
    chunks = [b"--%s\r\nContent-Disposition: form-data; name=\"k%d\"\r\n\r\n%s\r\n" % (boundary.encode(), i, value) for i in range(parts)]
    return b"".join(chunks) + b"--%s--\r\n" % boundary.encode(), f"multipart/form-data; boundary={boundary}"


def test_huge_forms_do_not_stall_the_server(healthy: SecServer) -> None:
    """Two million url-encoded fields and 120k multipart parts (seconds of
    parsing on the loop before) are refused 413 at once; the sentinel stays fast."""
    path = _form_route(healthy)
    urlencoded = b"a=b&" * 2_000_000
    multipart, mtype = _multipart(120_000, b"v")

    async def attack(c: httpx.AsyncClient) -> list[tuple[int, str]]:
        out = []
        for _ in range(3):
            for body, ctype in ((urlencoded, "application/x-www-form-urlencoded"), (multipart, mtype)):
                r = await c.post(path, content=body, headers={"Content-Type": ctype})
                out.append((r.status_code, r.json()["error"]))
        return out

    latencies, answers = under_attack(healthy, attack)
    assert answers == [(413, "too_many_form_fields")] * 6
    assert latencies and max(latencies) < STALL_BOUND_S, f"sentinel worst {max(latencies):.3f} s"


def test_large_allowed_forms_are_parsed_off_the_loop(healthy: SecServer) -> None:
    """1000 fields of 2,700 percent-escapes each (8 MB; ~1 s of Python
    decoding) are parsed in a thread: the module gets every field, and the
    sentinel keeps answering meanwhile."""
    path = _form_route(healthy)
    value = b"%41" * 2700
    urlencoded = b"&".join(b"k%d=%s" % (i, value) for i in range(1000))
    multipart, mtype = _multipart(1000, b"B" * 8000)

    async def attack(c: httpx.AsyncClient) -> list[str]:
        out = []
        for body, ctype in ((urlencoded, "application/x-www-form-urlencoded"), (multipart, mtype)) * 2:
            r = await c.post(path, content=body, headers={"Content-Type": ctype})
            assert r.status_code == 200, r.text
            out.append(r.text)
        return out

    latencies, answers = under_attack(healthy, attack)
    assert answers == ["2700 2700 AAAAAAAA", "8000 8000 BBBBBBBB"] * 2
    assert latencies and max(latencies) < STALL_BOUND_S, f"sentinel worst {max(latencies):.3f} s"


def test_malformed_and_over_limit_forms_are_clear_errors(healthy: SecServer) -> None:
    """A multipart body the parser refuses is 400 malformed_form, on the
    fast path (small) and the threaded one (large); never a dropped connection."""
    path = _form_route(healthy)
    with healthy.client() as c:
        for filler in (b"", b"x" * (100 << 10)):
            body = b"--zz\r\nNo-Colon-Header\r\n\r\n" + filler + b"\r\n--zz--\r\n"
            r = c.post(path, content=body, headers={"Content-Type": "multipart/form-data; boundary=zz"})
            assert (r.status_code, r.json()["error"]) == (400, "malformed_form"), r.text
        r = c.post(path, content=b"&".join(b"k%d=v" % i for i in range(1001)), headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert (r.status_code, r.json()["error"]) == (413, "too_many_form_fields")
        r = c.post(path, content=b"&".join(b"k%d=v" % i for i in range(1000)), headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.text == "1 1 v"


def test_a_locked_registry_delays_its_own_calls_only(healthy: SecServer) -> None:
    """A write lock on registry.db held elsewhere (a module could take one
    before workers were confined): a removal answers 503 registry_busy after
    the bounded busy timeout and leaves the module serving, while the
    sentinel route, /healthz and registry reads answer fast all the while."""
    import sqlite3

    from api.registry import BUSY_TIMEOUT_MS

    name = unique("locked")
    path = f"/{unique('locked')}"
    assert healthy.deploy(route_module(name, path, "still")).status_code == 200
    locker = sqlite3.connect(healthy.data_dir / "registry.db", isolation_level=None, timeout=10)
    try:
        locker.execute("BEGIN IMMEDIATE")
        locker.execute("INSERT INTO deploys (name, module_hash, action, at) VALUES ('x', NULL, 'lock', 0)")

        async def attack(c: httpx.AsyncClient) -> list[tuple[int, float]]:
            async def remove() -> tuple[int, float]:
                t0 = time.perf_counter()
                r = await c.delete(f"/modules/{name}", headers=auth())
                return r.status_code, time.perf_counter() - t0
            answers = list(await asyncio.gather(remove(), remove()))
            answers.append(((await c.get(f"/modules/{name}/versions")).status_code, 0.0))
            answers.append(((await c.get(path)).status_code, 0.0))
            return answers

        latencies, answers = under_attack(healthy, attack)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert [code for code, _ in answers] == [503, 503, 200, 200], answers
    # One registry thread: the calls queue, each bounded by the busy timeout.
    assert max(t for _, t in answers[:2]) < 2 * BUSY_TIMEOUT_MS / 1000 + 2
    assert latencies and max(latencies) < STALL_BOUND_S, f"sentinel worst {max(latencies):.3f} s"
    with healthy.client() as c:
        assert c.get(path).text == "still"
        assert c.delete(f"/modules/{name}", headers=auth()).status_code == 200
        assert c.get(path).status_code == 404
