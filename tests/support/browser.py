"""A real headless Chromium for the browser tests: Debian's ``chromium``, driven by Playwright.

Playwright's own browser download cannot work on this project's machines, so the browser is
the one `scripts/setup.sh` installs (``apt-get install chromium``), at ``/usr/bin/chromium``
unless ``THERMOFLOW_TEST_CHROMIUM`` names another. Each page gets a fresh profile, and its
screenshots go to the test's output folder, ``.thermoflow/test-output/<test>/`` (kept after the
run, so a failure can be looked at).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / ".thermoflow" / "test-output"
CHROMIUM_VAR = "THERMOFLOW_TEST_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
#: Without the background-networking flags, Chromium's own calls home fail on a closed network and
#: some of the page's connections are refused with them.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
TIMEOUT_MS = 30_000  # a loaded 2-core machine: a click's effect may take a while to show


def chromium_executable() -> str:
    """The Chromium to drive; fails the test, saying how to install it, when there is none."""
    path = os.environ.get(CHROMIUM_VAR) or DEFAULT_CHROMIUM
    found = shutil.which(path)
    if found is None:
        pytest.fail(
            f"no Chromium at {path}: the browser tests need Debian's chromium package"
            f" (run scripts/setup.sh as root, or apt-get install chromium), or {CHROMIUM_VAR}"
            " naming a Chromium executable",
            pytrace=False,
        )
    return found


def output_dir(nodeid: str) -> Path:
    """The test's own output folder, emptied: one folder per test id, in plain characters."""
    folder = OUTPUT / re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@dataclass
class BrowserPage:
    """A page in a fresh Chromium profile, its screenshots and what its scripts complained of."""

    page: Page
    output: Path
    #: Uncaught script errors and console errors: a page that throws is broken even if it shows.
    errors: list[str] = field(default_factory=list)

    async def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        """Save the page as ``<output>/<name>.png`` and return its path."""
        path = self.output / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=full_page)
        return path


@contextlib.asynccontextmanager
async def open_page(output: Path) -> AsyncIterator[BrowserPage]:
    """Start Chromium with a fresh profile under ``output`` and give its page; a last screenshot
    (``last.png``) is saved when the block ends, failed or not."""
    executable = chromium_executable()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(output / "profile"),
            executable_path=executable,
            args=list(FLAGS),
            headless=True,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            browser_page = BrowserPage(page, output)

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    browser_page.errors.append(f"console: {message.text}")

            page.on("pageerror", lambda error: browser_page.errors.append(f"page error: {error}"))
            page.on("console", on_console)
            try:
                yield browser_page
            finally:
                with contextlib.suppress(Exception):  # a page already gone has nothing to show
                    await browser_page.screenshot("last")
        finally:
            await context.close()
            shutil.rmtree(output / "profile", ignore_errors=True)
