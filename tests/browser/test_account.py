"""The account page in a real browser (headless Chromium): reached from the top bar, a read-only
API token made (shown once) and revoked (after a confirmation), and a password change that logs
out another browser while this one stays in."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable

from playwright.sync_api import Page, expect

from devserver.stack import LocalStack

EXPECT_MS = 20_000


def log_in(page: Page, email: str, password: str) -> None:
    page.goto("/login")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible(timeout=EXPECT_MS)


def api(stack: LocalStack, token: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{stack.panel_url}/api/v1/lists", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_tokens_and_password_on_the_account_page(stack: LocalStack, new_page: Callable[[], Page], screenshot) -> None:
    email, password, new_password = "account@mailfleet.test", "the first password", "the second password"
    stack.flask("users", "create", email, "--password", password)
    page = new_page()
    log_in(page, email, password)
    page.locator("header").get_by_role("link", name=email).click()
    expect(page.get_by_role("heading", name="Account")).to_be_visible()
    expect(page.get_by_text("No API tokens yet.")).to_be_visible()

    # A read-only token for a week: shown once, then listed without it.
    form = page.locator("#add-token")
    form.get_by_label("Name").fill("dashboard")
    form.get_by_label("Read only (GET)").check()
    form.get_by_label("Expires after (days)").fill("7")
    form.get_by_role("button", name="Make token").click()
    shown = page.locator("#new-token")
    expect(shown).to_contain_text("shown only now")
    token = re.search(r"mf_\S+", shown.locator("pre").inner_text()).group(0)
    row = page.locator("tr.token-row", has_text="dashboard")
    expect(row).to_contain_text("read only")
    expect(row).to_contain_text("active")
    screenshot(page, "account-new-token")
    assert api(stack, token)[0] == 200
    status, body = api(stack, token, "POST", {"name": "not allowed"})
    assert status == 403 and "read-only" in body["error"]
    page.goto("/account")
    expect(page.locator("#new-token")).to_have_count(0)
    assert token not in page.content()

    # Revoked after saying yes to the question; the API refuses it from then on.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr.token-row", has_text="dashboard").get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_contain_text("is revoked")
    expect(page.locator("tr.token-row", has_text="dashboard")).to_contain_text("revoked")
    status, body = api(stack, token)
    assert status == 401 and "revoked" in body["error"]

    # A password change: another browser logged in before is logged out, this one stays.
    elsewhere = new_page()
    log_in(elsewhere, email, password)
    box = page.locator("#password")
    box.get_by_label("Current password").fill(password)
    box.get_by_label("New password", exact=True).fill(new_password)
    box.get_by_label("New password again").fill(new_password)
    box.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_contain_text("password was changed")
    elsewhere.goto("/campaigns/")
    expect(elsewhere).to_have_url(re.compile(r"/login"))
    page.goto("/campaigns/")
    expect(page.get_by_role("heading", name="Campaigns")).to_be_visible()
    screenshot(page, "account-after-password-change")
