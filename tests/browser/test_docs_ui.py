"""/docs, /redoc and the status page /ui in a real headless chromium.

Every page runs with the network cut off from everything but the server:
a route handler aborts any request to another host, and each test asserts
that no such request was even attempted (requests a Content-Security-Policy
blocks before they leave the browser count as attempted too).

Debian's /usr/bin/chromium is driven by Playwright's Python package; no
browser is downloaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import Server, route_module, unique

pytestmark = pytest.mark.browser

# Generous for a cold page on a loaded 2-core machine; each wait still fails fast when it can.
WAIT_MS = 30_000

if not os.path.exists(CHROMIUM):
    pytest.skip(f"headless browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, Playwright, Request, Route, WebSocket, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=WAIT_MS)

HANDLER = "static int {fn}(struct cweb_context *ctx, http_request_t *req, http_response_t *res)"


@dataclass
class Offline:
    """Lets a page reach the server only; remembers everything else it tried."""

    origin: str
    attempted: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)

    def local(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            return True  # never leaves the browser
        return parts.scheme in ("http", "ws") and parts.netloc == self.origin

    def route(self, route: Route) -> None:
        if self.local(route.request.url):
            route.continue_()
        else:
            self.attempted.append(route.request.url)
            route.abort("internetdisconnected")

    def on_request(self, request: Request) -> None:
        # Also sees requests a CSP refuses before they reach the route handler.
        self.requested.append(request.url)
        if not self.local(request.url) and request.url not in self.attempted:
            self.attempted.append(request.url)

    def on_websocket(self, ws: WebSocket) -> None:
        self.sockets.append(ws.url)
        if not self.local(ws.url):
            self.attempted.append(ws.url)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield b
    b.close()


@pytest.fixture
def offline(server: Server) -> Offline:
    return Offline(origin=f"127.0.0.1:{server.port}")


@pytest.fixture
def page(browser: Browser, offline: Offline) -> Iterator[Page]:
    context = browser.new_context(service_workers="block")
    context.route("**/*", offline.route)
    p = context.new_page()
    p.on("request", offline.on_request)
    p.on("websocket", offline.on_websocket)
    p.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    context.close()
    assert [] == errors, "uncaught JavaScript errors"


def deploy(server: Server, source: str, filename: str = "module.c") -> dict:
    r = server.deploy(source, filename)
    assert 200 == r.status_code, r.text
    return r.json()


def printing_route(name: str, marker: str) -> str:
    return f"""#include <cweb.h>
{HANDLER.format(fn="say")} {{
    (void)ctx; (void)req;
    printf("%s\\n", "{marker}");
    snprintf(res->body, HTTP_RESPONSE_SIZE, "ok");
    return 0;
}}
export module_t config = {{
    .name = "{name}", .author = "tests",
    .routes = {{ {{"/{name}", "GET", say, NONE}} }}, .size = 1,
}};
"""


def spin_jobs(name: str) -> str:
    """Job `spin`: reports progress every 20 ms until canceled."""
    return f"""#include <cweb.h>
#include <unistd.h>
static int spin(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {{
    (void)ctx; (void)p;
    for (int i = 0; i < 3000; i++) {{
        if (job->is_canceled(job)) {{ job->set_error(job, "canceled"); return -1; }}
        if (i % 10 == 0) job->progress(job, (double)i, 3000.0);
        usleep(20 * 1000);
    }}
    job->set_result(job, "{{}}");
    return 0;
}}
export module_t config = {{
    .name = "{name}", .author = "tests",
    .jobs = {{ {{"spin", spin, NULL}} }}, .job_size = 1,
}};
"""


# ---------------------------------------------------------------------------
# /docs and /redoc


def test_docs_renders_swagger_ui_offline_with_control_plane_and_live_module_routes(server: Server, page: Page, offline: Offline) -> None:
    name = unique("uidoc")
    info = deploy(server, route_module(name, f"/{name}"))
    page.goto(f"{server.url}/docs")

    mgnt = page.locator('.opblock-summary-path[data-path="/mgnt"]')
    expect(mgnt).to_be_visible()
    live = page.locator(f'.opblock-summary-path[data-path="/{name}"]')
    expect(live).to_be_visible()
    live.click()
    expect(page.locator(".opblock.is-open", has=live).locator(".opblock-description-wrapper").first).to_contain_text(info["module_hash"])
    expect(page.locator(".opblock-tag-section", has=live)).to_contain_text(f"module: {name}")

    assert f"{server.url}/docs/static/swagger-ui-bundle.js" in offline.requested
    assert f"{server.url}/openapi.json" in offline.requested
    assert [] == offline.attempted


def test_docs_try_it_out_reaches_a_regex_route_through_its_example(server: Server, page: Page, offline: Offline) -> None:
    """A regex route sits under its module's tag as a template with an example
    parameter; "Try it out" + "Execute" sends a path the module answers."""
    name = unique("uitry")
    code = f"""#include <cweb.h>
{HANDLER.format(fn="item")} {{ (void)ctx; snprintf(res->body, HTTP_RESPONSE_SIZE, "item at %s", req->path); return 0; }}
export module_t config = {{
    .name = "{name}", .author = "tests",
    .routes = {{ {{"/{name}/items/([0-9]+)", "GET", item, NONE}} }}, .size = 1,
}};
"""
    deploy(server, code)
    page.goto(f"{server.url}/docs")
    live = page.locator(f'.opblock-summary-path[data-path="/{name}/items/{{p1}}"]')
    expect(live).to_be_visible()
    expect(page.locator(".opblock-tag-section", has=live).locator(".opblock-tag")).to_contain_text(f"module: {name}")
    live.click()
    block = page.locator(".opblock.is-open", has=live)
    block.locator(".try-out__btn").click()
    block.locator(".execute").click()
    expect(block.locator(".live-responses-table tbody .response-col_status").first).to_contain_text("200")
    expect(block.locator(".live-responses-table tbody .response-col_description").first).to_contain_text(f"item at /{name}/items/1")
    assert [] == offline.attempted


def test_docs_shows_the_deploy_upload_schema(server: Server, page: Page, offline: Offline) -> None:
    """The operation /mgnt documents its multipart `code` field and its answers."""
    page.goto(f"{server.url}/docs")
    page.locator('.opblock-summary-path[data-path="/mgnt"]').click()
    block = page.locator(".opblock.is-open")
    expect(block).to_contain_text("multipart/form-data")
    expect(block.locator(".parameters-col_name", has_text="code").first).to_be_visible()
    expect(block.locator(".responses-table")).to_contain_text("Compile error")
    assert [] == offline.attempted


def test_redoc_renders_offline(server: Server, page: Page, offline: Offline) -> None:
    name = unique("uiredoc")
    deploy(server, route_module(name, f"/{name}"))
    page.goto(f"{server.url}/redoc")
    expect(page.locator("h2", has_text="Deploy a C module")).to_be_visible()
    expect(page.locator("h2", has_text=f"GET /{name} — module {name}")).to_be_attached()
    expect(page.locator("h1", has_text="cweb")).to_be_visible()
    assert [] == offline.attempted


# ---------------------------------------------------------------------------
# the status page


def test_status_page_lists_a_deployed_module_with_its_hash_versions_and_output(server: Server, page: Page, offline: Offline) -> None:
    name = unique("uimod")
    marker = unique("uiprint")
    first = deploy(server, printing_route(name, marker))
    second = deploy(server, printing_route(name, marker + "2"))
    assert 200 == httpx.get(f"{server.url}/{name}", timeout=30).status_code

    page.goto(f"{server.url}/ui")
    row = page.locator(f'#modules tr[data-module="{name}"]')
    expect(row).to_contain_text(second["module_hash"][:12])
    expect(row.locator("td.hash")).to_have_attribute("title", second["module_hash"])
    expect(row).to_contain_text(f"GET /{name}")
    expect(row.locator(".state")).to_have_text("active")

    row.click()
    versions = page.locator("#versions")
    expect(versions).to_contain_text(second["module_hash"])
    expect(versions).to_contain_text(first["module_hash"])
    expect(page.locator("#module-logs")).to_contain_text(marker + "2")
    expect(page.locator(f'#workers tr:has-text("{name}")').first).to_be_visible()
    assert [] == offline.attempted


def test_status_page_shows_a_job_change_state_live_and_its_events_on_click(server: Server, page: Page, offline: Offline) -> None:
    name = unique("uijob")
    deploy(server, spin_jobs(name))
    page.goto(f"{server.url}/ui")
    page.evaluate("window.__sameDocument = true")

    with httpx.Client(base_url=server.url, timeout=30) as c:
        job_uuid = c.post("/jobs", json={"module": name, "job": "spin"}).json()["job_uuid"]
        row = page.locator(f'#jobs tr[data-job="{job_uuid}"]')
        expect(row.locator(".state")).to_have_text("running")
        assert 200 == c.post(f"/jobs/{job_uuid}/cancel").status_code
    expect(row.locator(".state")).to_have_text("canceled")
    assert page.evaluate("window.__sameDocument === true"), "updated in place, not by reloading"

    row.click()
    expect(page.locator("#evjob")).to_have_text(job_uuid)
    events = page.locator("#events .event")
    expect(page.locator('#events .event[data-type="canceled"]')).to_have_count(1)
    types = events.evaluate_all("els => els.map(e => e.dataset.type)")
    assert "created" == types[0] and "started" in types and "progress" in types and "canceled" == types[-1]
    expect(page.locator(f'#jobs tr.selected[data-job="{job_uuid}"]')).to_have_count(1)
    assert any(f"/jobs/ws?id={job_uuid}" in url for url in offline.sockets)
    assert [] == offline.attempted


def test_status_page_shows_a_failed_builds_diagnostics(server: Server, page: Page, offline: Offline) -> None:
    filename = unique("uibroken") + ".c"
    r = server.deploy("#include <cweb.h>\nint x = ;\n", filename)
    assert 422 == r.status_code
    page.goto(f"{server.url}/ui")
    row = page.locator("#builds tr", has_text=filename)
    expect(row.locator(".state")).to_have_text("failed")
    expect(row.locator(".diag")).to_contain_text(f"{filename}:2:9: error: expected expression before ';' token")
    assert [] == offline.attempted


def test_status_page_follows_a_deploy_without_reload(server: Server, page: Page, offline: Offline) -> None:
    """A module deployed while the page is open appears on its own, then its redeploy's hash."""
    page.goto(f"{server.url}/ui")
    expect(page.locator("#meta")).to_contain_text("module(s)")
    name = unique("uilive")
    info = deploy(server, route_module(name, f"/{name}", body="one"))
    row = page.locator(f'#modules tr[data-module="{name}"]')
    expect(row).to_contain_text(info["module_hash"][:12])
    t0 = time.monotonic()
    info2 = deploy(server, route_module(name, f"/{name}", body="two"))
    expect(row).to_contain_text(info2["module_hash"][:12])
    assert time.monotonic() - t0 < 10
    assert [] == offline.attempted


def test_status_page_asks_for_the_key_when_one_is_set(make_server, browser: Browser) -> None:
    """With CWEB_API_KEY, the page's data needs the key: the page asks for it
    once, then shows builds, workers and module output."""
    key = "ui-" + unique("key")
    s = make_server(env={"CWEB_API_KEY": key})
    name = unique("uikey")
    marker = unique("uikeyprint")
    filename = name + ".c"
    r = s.deploy(printing_route(name, marker), filename, headers={"X-API-Key": key})
    assert 200 == r.status_code, r.text
    assert 200 == httpx.get(f"{s.url}/{name}", timeout=30).status_code
    assert 401 == httpx.get(f"{s.url}/_cweb/builds", timeout=30).status_code
    context = browser.new_context(service_workers="block")
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{s.url}/ui")
        expect(page.locator("#keyform")).to_be_visible()
        page.fill("#apikey", key)
        page.click("#keyform button")
        expect(page.locator("#keyform")).to_be_hidden()
        expect(page.locator("#builds tr", has_text=filename).locator(".state")).to_have_text("compiled")
        expect(page.locator(f'#workers tr:has-text("{name}")').first).to_be_visible()
        page.locator(f'#modules tr[data-module="{name}"]').click()
        expect(page.locator("#module-logs")).to_contain_text(marker)
    finally:
        context.close()


def test_status_page_follows_a_jobs_events_with_the_key(make_server, browser: Browser) -> None:
    """With CWEB_API_KEY, /jobs/ws needs the key and a browser cannot put one on
    a WebSocket handshake: the page follows the job's events over
    GET /jobs/{uuid}/events?follow=1 with the key instead."""
    key = "ui-" + unique("jobkey")
    s = make_server(env={"CWEB_API_KEY": key})
    name = unique("uikeyjob")
    r = s.deploy(spin_jobs(name), name + ".c", headers={"X-API-Key": key})
    assert 200 == r.status_code, r.text
    with httpx.Client(base_url=s.url, timeout=30, headers={"X-API-Key": key}) as c:
        job_uuid = c.post("/jobs", json={"module": name, "job": "spin"}).json()["job_uuid"]
        assert 401 == httpx.get(f"{s.url}/jobs/{job_uuid}/events", timeout=30).status_code
        context = browser.new_context(service_workers="block")
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{s.url}/ui")
            page.fill("#apikey", key)
            page.click("#keyform button")
            row = page.locator(f'#jobs tr[data-job="{job_uuid}"]')
            expect(row.locator(".state")).to_have_text("running")
            row.click()
            expect(page.locator('#events .event[data-type="progress"]').first).to_be_visible()
            assert 200 == c.post(f"/jobs/{job_uuid}/cancel").status_code
            expect(page.locator('#events .event[data-type="canceled"]')).to_have_count(1)
            types = page.locator("#events .event").evaluate_all("els => els.map(e => e.dataset.type)")
            assert "created" == types[0] and "started" in types and "canceled" == types[-1]
            assert "error" not in types
        finally:
            context.close()


# ---------------------------------------------------------------------------
# the status page: charts, refusals, rollback, crashes, live feed


def crashing_module(name: str) -> str:
    return f"""#include <cweb.h>
#include <signal.h>
{HANDLER.format(fn="fine")} {{ (void)ctx; (void)req; snprintf(res->body, HTTP_RESPONSE_SIZE, "fine"); return 0; }}
{HANDLER.format(fn="boom")} {{ (void)ctx; (void)req; (void)res; raise(SIGSEGV); return 0; }}
export module_t config = {{
    .name = "{name}", .author = "tests",
    .routes = {{ {{"/{name}", "GET", fine, NONE}}, {{"/{name}/boom", "GET", boom, NONE}} }}, .size = 2,
}};
"""


def test_status_page_charts_move_after_traffic(server: Server, page: Page, offline: Offline, tmp_path) -> None:
    """Each module row has request-rate, error-rate and latency charts (inline
    SVG); after traffic their numbers move and the charts' pixels change."""
    name = unique("uichart")
    deploy(server, crashing_module(name))
    page.goto(f"{server.url}/ui")
    row = page.locator(f'#modules tr[data-module="{name}"]')
    for metric in ("rate", "errors", "latency"):
        expect(row.locator(f'.chart[data-metric="{metric}"] svg.spark polyline')).to_be_attached()
    rate = row.locator('.num[data-metric="rate"]')
    expect(rate).to_have_text("0.0/s")
    charts = row.locator("td.chart-cell")
    before = tmp_path / "charts-before.png"
    charts.first.screenshot(path=str(before))

    with httpx.Client(base_url=server.url, timeout=30) as c:
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            assert 200 == c.get(f"/{name}").status_code
            time.sleep(0.02)
        assert 502 == c.get(f"/{name}/boom").status_code
    page.wait_for_function(f"""() => {{
        const row = document.querySelector('#modules tr[data-module="{name}"]');
        const v = (m) => parseFloat(row.querySelector(`.num[data-metric="${{m}}"]`).dataset.value || "0");
        return v("rate") > 1 && v("latency") > 0;
    }}""")
    page.wait_for_function(f"""() => {{
        const row = document.querySelector('#modules tr[data-module="{name}"]');
        return parseFloat(row.querySelector('.num[data-metric="errors"]').title || "0") > 0;
    }}""")
    assert "requests since start" in row.locator('.num[data-metric="errors"]').get_attribute("title")
    points = row.locator('.chart[data-metric="rate"] polyline').get_attribute("points")
    assert len(points.split()) >= 2
    after = tmp_path / "charts-after.png"
    charts.first.screenshot(path=str(after))
    assert before.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" == after.read_bytes()[:8]
    assert before.read_bytes() != after.read_bytes(), "the rate chart looks the same after traffic"
    assert [] == offline.attempted


def test_status_page_tells_a_rejected_deploy_from_a_compiled_one(server: Server, page: Page, offline: Offline) -> None:
    """A module that compiles but whose route another module serves shows as
    `rejected` with the refusal's code, not as a green build."""
    owner, intruder = unique("uiown"), unique("uiintr")
    deploy(server, route_module(owner, f"/{owner}"))
    filename = intruder + ".c"
    assert 409 == server.deploy(route_module(intruder, f"/{owner}"), filename).status_code
    page.goto(f"{server.url}/ui")
    row = page.locator("#builds tr", has_text=filename)
    expect(row.locator(".state")).to_have_text("rejected")
    expect(row.locator(".diag")).to_contain_text("route_conflict")
    expect(row.locator(".diag")).to_have_attribute("data-error", "route_conflict")
    assert [] == offline.attempted


def test_status_page_shows_crashes_and_restarts_live(server: Server, page: Page, offline: Offline) -> None:
    """A crash while the module's detail is open appears in its history (crashed,
    then restarted) from the live feed, and nothing is polled meanwhile."""
    name = unique("uicrash")
    info = deploy(server, crashing_module(name))
    page.goto(f"{server.url}/ui")
    expect(page.locator("#feed")).to_have_text("● live")
    page.locator(f'#modules tr[data-module="{name}"]').click()
    expect(page.locator("#history")).to_contain_text("no crashes")
    # Idle: the page asks for nothing (the feed says when to).
    asked = len(offline.requested)
    page.wait_for_timeout(2500)
    assert [] == [u for u in offline.requested[asked:] if "/_cweb/builds" in u or "/jobs" in u or "/modules" in u]
    assert 502 == httpx.get(f"{server.url}/{name}/boom", timeout=30).status_code
    expect(page.locator('#history tr[data-event="crashed"]')).to_have_count(1)
    expect(page.locator('#history tr[data-event="restarted"]')).to_have_count(1)
    expect(page.locator('#history tr[data-event="crashed"]')).to_contain_text(info["module_hash"][:12])
    assert [] == offline.attempted


def test_status_page_rolls_back_behind_the_key(make_server, browser: Browser) -> None:
    """With CWEB_API_KEY, the rollback button is refused until the key is
    given; then it activates the older version and the page follows."""
    key = "ui-" + unique("rbkey")
    s = make_server(env={"CWEB_API_KEY": key})
    name = unique("uirb")
    hashes = []
    for body in ("one", "two"):
        r = s.deploy(route_module(name, f"/{name}", body=body), f"{name}.c", headers={"X-API-Key": key})
        assert 200 == r.status_code, r.text
        hashes.append(r.json()["module_hash"])
    context = browser.new_context(service_workers="block")
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{s.url}/ui")
        row = page.locator(f'#modules tr[data-module="{name}"]')
        expect(row).to_contain_text(hashes[1][:12])
        row.click()
        button = page.locator(f'#versions tr[data-hash="{hashes[0]}"] button.rollback')
        button.click()
        expect(page.locator("#detail-status")).to_have_text("rollback needs the API key")
        assert "two" == httpx.get(f"{s.url}/{name}", timeout=30).text
        page.fill("#apikey", key)
        page.click("#keyform button")
        expect(page.locator("#feed")).to_have_text("● live")
        button.click()
        expect(page.locator("#detail-status")).to_have_text(f"rolled back to {hashes[0][:12]}")
        expect(row).to_contain_text(hashes[0][:12])
        expect(page.locator(f'#versions tr[data-hash="{hashes[0]}"] .state')).to_have_text("active")
        assert "one" == httpx.get(f"{s.url}/{name}", timeout=30).text
    finally:
        context.close()
