"""example/chat.c in a real browser: Debian's headless chromium, driven by
Playwright's Python package (never a browser of Playwright's own)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.browser

WAIT_MS = 15_000


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing (`make test` installs the chromium package)")
def test_chat_message_from_one_page_shows_in_both(make_server: Any, tmp_path: Path) -> None:
    """Two pages open /chat; a message typed and sent in one appears in the
    #log of both."""
    from playwright.sync_api import expect, sync_playwright

    server = make_server()
    r = server.deploy((EXAMPLES / "chat.c").read_text(), "chat.c")
    assert 200 == r.status_code, r.text

    with sync_playwright() as pw:
        # A fresh profile per run: nothing carried over between tests.
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
        )
        try:
            context.set_default_timeout(WAIT_MS)
            alice, bob = context.new_page(), context.new_page()
            for page in (alice, bob):
                page.goto(server.url + "/chat")
                expect(page.locator("#status")).to_have_text("connected")
            # Bob joined second, so Alice has seen his join by the time he sees his own.
            expect(bob.locator("#log")).to_contain_text("joined")
            expect(alice.locator("#log div")).to_have_count(2)

            alice.fill("#msg", "hello from alice")
            alice.click("#send")

            for page in (alice, bob):
                expect(page.locator("#log")).to_contain_text("hello from alice")
            line = alice.locator("#log div").last.text_content()
            assert line is not None and line.endswith(": hello from alice")
            assert line == bob.locator("#log div").last.text_content()
            assert "" == alice.input_value("#msg")
        finally:
            context.close()
