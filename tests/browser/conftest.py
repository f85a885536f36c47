"""A real browser against the whole system: the stack once per module, headless Chromium driven by Playwright.

Every process is stopped at teardown: the stack by LocalStack's context manager, the browser
(and Playwright's driver) by the fixtures below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from devserver.stack import LocalStack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TIMEOUT_MS = 20_000  # any single click, fill or expectation


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def chromium(playwright_driver: Playwright) -> Iterator[Browser]:
    # Playwright gives each launch its own fresh temporary user-data directory.
    browser = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def new_page(chromium: Browser, stack: LocalStack) -> Iterator[Callable[[], Page]]:
    """Opens a page in a fresh browser context (own cookies, like another person's browser)."""
    contexts: list[BrowserContext] = []
    script_errors: list[str] = []

    def make() -> Page:
        context = chromium.new_context(base_url=stack.panel_url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: script_errors.append(f"{page.url}: {error}"))
        return page

    try:
        yield make
    finally:
        for context in contexts:
            context.close()
    if script_errors:
        pytest.fail("the pages' scripts failed:\n" + "\n".join(script_errors))


@pytest.fixture
def screenshot() -> Callable[[Page, str], None]:
    """Saves a full-page screenshot to tests/browser/artifacts/NAME.png when MAILFLEET_SCREENSHOTS is set."""

    def take(page: Page, name: str) -> None:
        if not os.environ.get("MAILFLEET_SCREENSHOTS"):
            return
        ARTIFACTS.mkdir(exist_ok=True)
        # A viewport as tall as the page rather than full_page=True, which leaves sandboxed iframes blank.
        size = page.viewport_size or {"width": 1280, "height": 900}
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": size["width"], "height": max(height, size["height"])})
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        finally:
            page.set_viewport_size(size)

    return take
