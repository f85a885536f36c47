"""The admin area in a real browser (headless Chromium): make run's first account is an admin, who
creates a user (the password shown once), gives them a quota, lends them a server, and finds
it all in the audit log;
the new user logs in, has no Admin link and gets a 404 there. Every page fits 375 px."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from devserver.stack import LocalStack
from tests.browser.test_account import log_in

PHONE = {"width": 375, "height": 800}

def fits(page: Page) -> None:
    """No sideways scrolling at the page's current width."""
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{page.url} is {overflow}px too wide"

def test_admin_creates_a_user_with_a_quota_and_reads_the_audit_log(stack: LocalStack, new_page: Callable[[], Page],
                                                                   screenshot) -> None:
    page = new_page()
    log_in(page, stack.settings.admin_email, stack.admin_password)
    page.locator("header").get_by_role("link", name="Admin", exact=True).click()
    expect(page.get_by_role("heading", name="Admin: users")).to_be_visible()

    form = page.locator("#add-user")
    form.get_by_label("E-mail").fill("newcomer@mailfleet.test")
    form.get_by_role("button", name="Create user").click()
    shown = page.locator("#new-password")
    expect(shown).to_contain_text("shown only now")
    password = shown.locator("code.password").inner_text().strip()
    screenshot(page, "admin-users")

    page.get_by_role("link", name="newcomer@mailfleet.test").click()
    quota = page.locator("#quota")
    quota.get_by_label("Letters a day").fill("500")
    quota.get_by_label("Campaigns running at once").fill("1")
    quota.get_by_role("button", name="Save quotas").click()
    expect(page.get_by_text("The quotas of newcomer@mailfleet.test were saved.")).to_be_visible()
    expect(page.locator("#quota").get_by_label("Letters a day")).to_have_value("500")
    # The stack's worker is a server of the admin's: lent to the newcomer.
    shares = page.locator("#shared-servers")
    shares.get_by_role("checkbox").first.check()
    shares.get_by_role("button", name="Save shared servers").click()
    expect(page.get_by_text("newcomer@mailfleet.test may now send through")).to_be_visible()
    expect(page.locator("#shared-servers").get_by_role("checkbox").first).to_be_checked()
    screenshot(page, "admin-user")

    page.locator("nav.subnav").get_by_role("link", name="Audit log").click()
    table = page.locator("table.audit")
    expect(table).to_contain_text("user.created")
    expect(table).to_contain_text("quota.changed")
    expect(table).to_contain_text("server.shared")
    expect(table).to_contain_text("login")
    page.get_by_label("Search").fill("quota")
    page.get_by_role("button", name="Search").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    screenshot(page, "admin-audit")

    for url, name in (("/admin/users", "admin-users-375"), (page.url, "admin-audit-375")):
        page.set_viewport_size(PHONE)
        page.goto(url)
        screenshot(page, name)
        fits(page)
    page.get_by_role("link", name="Users").first.click()
    page.get_by_role("link", name="newcomer@mailfleet.test").click()
    expect(page.locator("#quota")).to_be_visible()
    screenshot(page, "admin-user-375")
    fits(page)

    other = new_page()
    log_in(other, "newcomer@mailfleet.test", password)
    expect(other.locator("header").get_by_role("link", name="Admin", exact=True)).to_have_count(0)
    assert other.goto("/admin/users").status == 404
