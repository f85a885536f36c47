"""Logging in and out, CSRF on every form, and who may see what."""

from __future__ import annotations

import pytest

from panel.models import MailingList


def test_login_page_and_successful_login(browser, alice):
    page = browser.get("/login")
    assert page.status_code == 200
    assert 'name="csrf_token"' in page.get_data(as_text=True)
    response = browser.post("/login", {"email": "alice@example.com", "password": "correct horse battery"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"  # the dashboard
    page = browser.get("/")
    assert page.status_code == 200
    assert "alice@example.com" in page.get_data(as_text=True) and "<h1>Dashboard</h1>" in page.get_data(as_text=True)


def test_login_is_case_insensitive_on_the_email(browser, alice):
    response = browser.post("/login", {"email": "  Alice@Example.COM ", "password": "correct horse battery"})
    assert response.status_code == 302


@pytest.mark.parametrize("email,password", [
    ("alice@example.com", "wrong password"),
    ("nobody@example.com", "correct horse battery"),
])
def test_wrong_credentials_are_refused(browser, alice, email, password):
    response = browser.post("/login", {"email": email, "password": password})
    assert response.status_code == 200
    assert "do not match an account" in response.get_data(as_text=True)
    assert browser.get("/campaigns/").status_code == 302


def test_login_follows_next_only_within_the_site(browser, alice):
    browser.get("/login?next=/lists/")
    response = browser.post("/login?next=/lists/", {"email": "alice@example.com", "password": "correct horse battery"})
    assert response.headers["Location"].endswith("/lists/")
    browser.client.delete_cookie("session")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        browser.token = None
        response = browser.post(f"/login?next={target}", {"email": "alice@example.com",
                                                          "password": "correct horse battery"})
        assert response.status_code == 302
        assert "evil" not in response.headers["Location"]
        browser.client.delete_cookie("session")


def test_passwords_are_stored_hashed(seed, monkeypatch):
    from panel.models import User

    monkeypatch.undo()  # the production hash, not the tests' fast one
    user = seed.get(User, seed.user("carol@example.com", "correct horse battery"))
    assert "correct horse battery" not in user.password_hash
    assert user.password_hash.startswith("scrypt:")


def test_logout_is_a_post_with_csrf(as_alice):
    assert as_alice.get("/logout").status_code == 405
    assert as_alice.post("/logout", csrf=False).status_code == 400
    assert as_alice.get("/campaigns/").status_code == 200  # still logged in
    response = as_alice.post("/logout")
    assert response.status_code == 302
    response = as_alice.get("/campaigns/")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_home_redirects(browser, alice):
    assert "/login" in browser.get("/").headers["Location"]
    browser.login("alice@example.com")
    home = browser.get("/")
    assert home.status_code == 200 and "<h1>Dashboard</h1>" in home.get_data(as_text=True)


# -- who may see what ------------------------------------------------------------------------

WEB_GET = [
    "/lists/", "/lists/{list}", "/lists/{list}/import", "/campaigns/", "/campaigns/new",
    "/campaigns/{campaign}", "/campaigns/{campaign}/edit", "/campaigns/{campaign}/preview",
    "/campaigns/{campaign}/stats", "/servers/", "/servers/{server}",
]
WEB_POST = [
    "/lists/", "/lists/{list}/import", "/campaigns/new", "/campaigns/{campaign}/edit",
    "/campaigns/{campaign}/start", "/campaigns/{campaign}/pause", "/campaigns/{campaign}/resume",
    "/campaigns/{campaign}/cancel", "/logout",
]
WEB_FOREIGN = [url for url in WEB_GET if "{" in url]
WEB_FOREIGN_POST = [url for url in WEB_POST if "{" in url]
API = [
    ("GET", "/api/v1/lists"), ("POST", "/api/v1/lists"), ("GET", "/api/v1/lists/{list}"),
    ("POST", "/api/v1/lists/{list}/recipients"), ("GET", "/api/v1/campaigns"), ("POST", "/api/v1/campaigns"),
    ("GET", "/api/v1/campaigns/{campaign}"), ("GET", "/api/v1/campaigns/{campaign}/stats"),
    ("POST", "/api/v1/campaigns/{campaign}/start"), ("POST", "/api/v1/campaigns/{campaign}/pause"),
    ("POST", "/api/v1/campaigns/{campaign}/resume"), ("POST", "/api/v1/campaigns/{campaign}/cancel"),
    ("GET", "/api/v1/servers"),
]
API_FOREIGN = [(method, url) for method, url in API if "{" in url]


@pytest.mark.parametrize("url", WEB_GET)
def test_anonymous_get_goes_to_login(browser, bob_objects, url):
    response = browser.get(url.format(**bob_objects))
    assert response.status_code == 302
    assert "/login?next=" in response.headers["Location"]


@pytest.mark.parametrize("url", WEB_POST)
def test_anonymous_post_goes_to_login(browser, bob_objects, url):
    response = browser.post(url.format(**bob_objects), {"name": "x"})
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


@pytest.mark.parametrize("url", WEB_FOREIGN)
def test_another_users_objects_are_404_on_the_web(as_alice, bob_objects, url):
    response = as_alice.get(url.format(**bob_objects))
    assert response.status_code == 404
    body = response.get_data(as_text=True)
    assert "Bob" not in body and "carol@example.org" not in body


@pytest.mark.parametrize("url", WEB_FOREIGN_POST)
def test_another_users_objects_are_404_for_form_posts(as_alice, seed, bob_objects, url):
    from panel.models import Campaign

    response = as_alice.post(url.format(**bob_objects), {"name": "hijacked"})
    assert response.status_code == 404
    assert seed.get(Campaign, bob_objects["campaign"]).status == "draft"
    assert seed.get(Campaign, bob_objects["campaign"]).name == "Spring news"


@pytest.mark.parametrize("method,url", API)
@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer wrong-token", "Basic YWxpY2U6eA=="])
def test_api_refuses_missing_or_bad_tokens(client, bob_objects, method, url, auth):
    headers = {"Authorization": auth} if auth else {}
    response = client.open(url.format(**bob_objects), method=method, headers=headers, json={})
    assert response.status_code == 401
    assert response.is_json and "token" in response.get_json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method,url", API_FOREIGN)
def test_api_another_users_objects_are_404(client, seed, alice, bob_objects, method, url):
    token = seed.token(alice)
    response = client.open(url.format(**bob_objects), method=method,
                           headers={"Authorization": f"Bearer {token}"}, json=[{"email": "x@example.org"}])
    assert response.status_code == 404
    assert set(response.get_json()) == {"error"}


def test_a_session_cookie_does_not_open_the_api(as_alice):
    response = as_alice.get("/api/v1/lists")
    assert response.status_code == 401


# -- CSRF -----------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "forged-token"])
def test_forms_refuse_posts_without_a_valid_csrf_token(as_alice, seed, alice, token):
    data = {"name": "Sneaky"} if token is None else {"name": "Sneaky", "csrf_token": token}
    response = as_alice.post("/lists/", data, csrf=False)
    assert response.status_code == 400
    assert "Reload the page" in response.get_data(as_text=True)
    assert seed.query(lambda s: s.query(MailingList).count()) == 0
    response = as_alice.post("/lists/", {"name": "Honest"})
    assert response.status_code == 302
    assert seed.query(lambda s: [m.name for m in s.query(MailingList)]) == ["Honest"]


def test_login_itself_needs_csrf(browser, alice):
    response = browser.post("/login", {"email": "alice@example.com", "password": "correct horse battery"}, csrf=False)
    assert response.status_code == 400
    assert browser.get("/campaigns/").status_code == 302


def test_security_headers(browser):
    response = browser.get("/login")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
