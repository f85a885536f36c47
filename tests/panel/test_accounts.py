"""Sessions and cookies: flags and HSTS by the public URL's scheme, a cookie copied before logout
or a password change refused after, and the account page (password change, API tokens)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import pytest
from sqlalchemy import select

from panel.models import ApiToken
from tests.panel.conftest import PASSWORD, Browser

NEW_PASSWORD = "a brand new password"


def cookie_headers(response) -> dict[str, str]:
    """Set-Cookie headers by cookie name."""
    return {value.split("=", 1)[0]: value for value in response.headers.getlist("Set-Cookie")}


def login_with_remember(browser: Browser):
    browser.get("/login")
    response = browser.post("/login", {"email": "alice@example.com", "password": PASSWORD, "remember": "y"})
    assert response.status_code == 302
    browser.token = None
    return response


def with_cookies(app, **cookies: str) -> Browser:
    """A new browser holding only these cookies (as if copied out of another one)."""
    other = Browser(app.test_client())
    for name, value in cookies.items():
        other.client.set_cookie(name, value)
    return other


def logged_in(browser: Browser) -> bool:
    response = browser.get("/campaigns/")
    assert response.status_code in (200, 302)
    return response.status_code == 200


# -- cookie flags and HSTS ---------------------------------------------------------------------

@pytest.mark.parametrize("app_config", [{"PUBLIC_URL": "https://panel.example.com"}])
def test_on_https_cookies_are_secure_and_hsts_is_sent(app, browser, alice, app_config, seed):
    response = login_with_remember(browser)
    cookies = cookie_headers(response)
    for name in ("session", "remember_token"):
        flags = [part.strip().lower() for part in cookies[name].split(";")]
        assert "secure" in flags and "httponly" in flags and "samesite=lax" in flags, cookies[name]
    expires = parsedate_to_datetime(re.search(r"Expires=([^;]+)", cookies["remember_token"]).group(1))
    assert timedelta(days=29) < expires - datetime.now(timezone.utc) <= timedelta(days=30)
    token = seed.token(alice)
    for response in (browser.get("/login"), browser.get("/campaigns/"), browser.get("/no/such/page"),
                     browser.client.get("/api/v1/lists", headers={"Authorization": f"Bearer {token}"}),
                     browser.client.get("/api/v1/lists")):
        assert response.headers["Strict-Transport-Security"].startswith("max-age="), response.request.path
        assert int(response.headers["Strict-Transport-Security"].split("=")[1].split(";")[0]) >= 86400 * 180


def test_on_http_cookies_are_httponly_and_lax_but_not_secure_and_no_hsts(browser, alice):
    response = login_with_remember(browser)
    cookies = cookie_headers(response)
    for name in ("session", "remember_token"):
        flags = [part.strip().lower() for part in cookies[name].split(";")]
        assert "httponly" in flags and "samesite=lax" in flags and "secure" not in flags, cookies[name]
    assert "Strict-Transport-Security" not in browser.get("/campaigns/").headers
    assert "Strict-Transport-Security" not in browser.get("/login").headers


# -- revocation ----------------------------------------------------------------------------------

def test_a_session_cookie_copied_before_logout_is_refused_after(app, browser, alice):
    browser.login("alice@example.com")
    copied = browser.client.get_cookie("session").value
    assert logged_in(with_cookies(app, session=copied))  # the copy works while the session lives
    browser.post("/logout")
    assert not logged_in(browser)
    assert not logged_in(with_cookies(app, session=copied))


def test_a_remember_cookie_copied_before_logout_is_refused_after(app, browser, alice):
    login_with_remember(browser)
    remembered = browser.client.get_cookie("remember_token").value
    assert logged_in(with_cookies(app, remember_token=remembered))
    browser.get("/campaigns/")
    browser.post("/logout")
    assert not logged_in(with_cookies(app, remember_token=remembered))


def test_a_password_change_ends_other_sessions_and_keeps_this_one(app, browser, alice):
    login_with_remember(browser)
    session_copy = browser.client.get_cookie("session").value
    remembered = browser.client.get_cookie("remember_token").value
    elsewhere = Browser(app.test_client())
    elsewhere.login("alice@example.com")
    browser.get("/account")
    response = browser.post("/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                                                  "confirm": NEW_PASSWORD})
    assert response.status_code == 302
    assert "password was changed" in browser.get("/account").get_data(as_text=True)
    assert logged_in(browser)
    assert not logged_in(elsewhere)
    assert not logged_in(with_cookies(app, session=session_copy))
    assert not logged_in(with_cookies(app, remember_token=remembered))
    fresh = Browser(app.test_client())
    assert fresh.login("alice@example.com", PASSWORD).status_code == 200
    assert fresh.login("alice@example.com", NEW_PASSWORD).status_code == 302


@pytest.mark.parametrize("data,message", [
    ({"current_password": "wrong one", "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
     "current password is not right"),
    ({"current_password": PASSWORD, "new_password": "short", "confirm": "short"}, "at least 8 characters"),
    ({"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm": "something else"}, "do not match"),
])
def test_a_password_change_with_bad_input_says_why_and_changes_nothing(app, as_alice, data, message):
    response = as_alice.post("/account/password", data)
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    assert logged_in(as_alice)
    assert Browser(app.test_client()).login("alice@example.com", PASSWORD).status_code == 302


# -- the account page ---------------------------------------------------------------------------

def test_the_account_page_is_linked_and_lists_tokens(as_alice, seed, alice, bob):
    seed.token(alice)
    seed.token(bob)
    page = as_alice.get("/campaigns/").get_data(as_text=True)
    assert 'href="/account"' in page
    page = as_alice.get("/account")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "API tokens" in text and "Change password" in text
    assert text.count('class="token-row"') == 1  # Bob's token is not shown


def test_a_token_made_on_the_account_page_is_shown_once_and_works(as_alice, client, seed, alice):
    response = as_alice.post("/account/tokens", {"name": "reporting", "scope": "read", "expires_days": "30"})
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    token = re.search(r"(mf_[A-Za-z0-9_-]{20,})", text).group(1)
    assert "shown only now" in text
    row = seed.query(lambda s: s.scalars(select(ApiToken)).one())
    assert (row.name, row.scope, row.user_id) == ("reporting", "read", alice)
    assert 29 <= (row.expires_at - row.created_at).days <= 30
    assert token not in as_alice.get("/account").get_data(as_text=True)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/lists", headers=headers).status_code == 200
    assert client.post("/api/v1/lists", headers=headers, json={"name": "x"}).status_code == 403


@pytest.mark.parametrize("data,message", [
    ({"name": "x" * 101, "scope": "write", "expires_days": ""}, "at most 100 characters"),
    ({"name": "ok", "scope": "admin", "expires_days": ""}, "Not a valid choice"),
    ({"name": "ok", "scope": "write", "expires_days": "0"}, "from 1 to 3650"),
    ({"name": "ok", "scope": "write", "expires_days": "soon"}, "whole number"),
])
def test_a_token_form_with_bad_input_says_why(as_alice, seed, data, message):
    response = as_alice.post("/account/tokens", data)
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    assert seed.query(lambda s: s.scalars(select(ApiToken)).all()) == []


def test_revoking_a_token_on_the_account_page(as_alice, client, seed, alice):
    token = seed.token(alice)
    token_id = seed.query(lambda s: s.scalars(select(ApiToken.id)).one())
    assert as_alice.post(f"/account/tokens/{token_id}/revoke", csrf=False).status_code == 400
    response = as_alice.post(f"/account/tokens/{token_id}/revoke")
    assert response.status_code == 302
    assert seed.get(ApiToken, token_id).revoked_at is not None
    assert "revoked" in as_alice.get("/account").get_data(as_text=True)
    response = client.get("/api/v1/lists", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and "revoked" in response.get_json()["error"]


def test_another_users_token_cannot_be_revoked(as_alice, seed, bob):
    seed.token(bob)
    token_id = seed.query(lambda s: s.scalars(select(ApiToken.id)).one())
    assert as_alice.post(f"/account/tokens/{token_id}/revoke").status_code == 404
    assert seed.get(ApiToken, token_id).revoked_at is None


def test_the_account_page_needs_a_login(browser):
    assert "/login" in browser.get("/account").headers["Location"]
