"""The browser fixture drives a real Chromium: a click changes the page, and screenshots are PNGs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.support.browser import BrowserPage

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>probe</title><link rel="icon" href="data:,"></head>
<body>
  <button id="go">fetch</button> <span id="out">nothing yet</span>
  <script>
    document.getElementById("go").addEventListener("click", async () => {
      const answer = await fetch("/answer", {method: "POST"});
      document.getElementById("out").textContent = await answer.text();
    });
  </script>
</body></html>
"""


@pytest.fixture
async def local_site() -> AsyncIterator[str]:
    """A tiny page whose button asks the server for its text: the browser runs script and talks HTTP."""
    clicks = 0

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def answer(_: web.Request) -> web.Response:
        nonlocal clicks
        clicks += 1
        return web.Response(text=f"clicked {clicks}")

    app = web.Application()
    app.add_routes([web.get("/", index), web.post("/answer", answer)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def test_a_click_changes_the_page_and_the_screenshot_is_a_png(
    browser_page: BrowserPage, local_site: str
) -> None:
    page = browser_page.page
    await page.goto(local_site)
    out = page.locator("#out")
    assert await out.text_content() == "nothing yet"
    await page.click("#go")
    await page.wait_for_function("document.getElementById('out').textContent === 'clicked 1'")
    await page.click("#go")
    await page.wait_for_function("document.getElementById('out').textContent === 'clicked 2'")

    shot = await browser_page.screenshot("clicked")
    assert shot.parent == browser_page.output
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert browser_page.errors == []
