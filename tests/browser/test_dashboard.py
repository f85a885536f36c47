"""The dashboard at / in a real browser (headless Chromium): the first page after logging in,
with its four parts, and no sideways scrolling on a 375 px phone. Screenshots dashboard-1280.png
and dashboard-375.png (MAILFLEET_SCREENSHOTS set)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from devserver.stack import LocalStack
from tests.browser.test_every_page_fits import log_in


@pytest.fixture(scope="module")
def layout_stack(db_backend: str, request: pytest.FixtureRequest) -> LocalStack:
    """SQLite only: what the page holds is tested on both databases in tests/panel/test_dashboard.py."""
    if db_backend != "sqlite":
        pytest.skip("layout only: on SQLite")
    return request.getfixturevalue("stack")


def test_the_dashboard_is_the_start_page_and_fits_a_phone(layout_stack: LocalStack, new_page: Callable[[], Page],
                                                         screenshot) -> None:
    stack = layout_stack
    page = new_page()
    log_in(page, stack)
    expect(page).to_have_url(f"{stack.panel_url}/")
    expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()
    for part in ("Problems", "Running and scheduled campaigns", "Fleet"):
        expect(page.get_by_role("heading", name=part)).to_be_visible()
    expect(page.get_by_text("letters today (UTC)")).to_be_visible()
    screenshot(page, "dashboard-1280")

    page.set_viewport_size({"width": 375, "height": 800})
    page.reload()
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the dashboard scrolls sideways by {overflow} px at 375 px"
    screenshot(page, "dashboard-375")
