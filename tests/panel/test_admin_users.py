"""The admin area's users (issue 10 point 3): the admin role from the CLI, users created, disabled
(no login, no session, no token), deleted and their passwords reset, from the pages and the API;
an ordinary user gets a 404 on all of it."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from panel.models import Campaign, MailingList, User
from tests.panel.conftest import PASSWORD, Browser


def make_admin(seed, user_id: int) -> None:
    def promote(session):
        session.get(User, user_id).is_admin = True
        session.commit()
    seed.query(promote)


@pytest.fixture
def root(seed) -> int:
    user_id = seed.user("root@example.com")
    make_admin(seed, user_id)
    return user_id


@pytest.fixture
def as_root(app, root) -> Browser:
    browser = Browser(app.test_client())
    browser.login("root@example.com")
    return browser


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_users_create_admin_makes_an_admin_and_plain_create_does_not(runner, seed):
    result = runner.invoke(args=["users", "create", "boss@example.com", "--password", PASSWORD, "--admin"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["users", "create", "plain@example.com", "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    admins = seed.query(lambda s: {u.email: u.is_admin for u in s.scalars(select(User))})
    assert admins == {"boss@example.com": True, "plain@example.com": False}


def test_an_ordinary_user_gets_404_on_admin_pages_and_api(as_alice, alice, root, seed):
    token = seed.token(alice)
    for url in ("/admin/users", f"/admin/users/{root}"):
        assert as_alice.get(url).status_code == 404
    assert as_alice.post("/admin/users", {"email": "x@example.com"}).status_code == 404
    assert as_alice.post(f"/admin/users/{root}/disable").status_code == 404
    for method, url in (("get", "/api/v1/admin/users"), ("post", "/api/v1/admin/users"),
                        ("get", f"/api/v1/admin/users/{root}"), ("delete", f"/api/v1/admin/users/{root}")):
        response = getattr(as_alice.client, method)(url, headers=bearer(token), json={})
        assert response.status_code == 404, (method, url)
    assert seed.get(User, root).disabled_at is None
    # Nor is there a link to it on her pages.
    assert "/admin/" not in as_alice.get("/campaigns/").get_data(as_text=True)


def test_admin_creates_a_user_whose_password_is_shown_once_and_works(app, as_root, seed):
    page = as_root.get("/admin/users")
    assert page.status_code == 200
    response = as_root.post("/admin/users", {"email": "New.User@Example.com"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    password = re.search(r'<code class="password">([^<]+)</code>', html).group(1)
    assert "new.user@example.com" in html
    newcomer = Browser(app.test_client())
    assert newcomer.login("new.user@example.com", password).status_code == 302
    assert newcomer.get("/campaigns/").status_code == 200
    # Shown once: the list page afterwards does not hold it.
    assert password not in as_root.get("/admin/users").get_data(as_text=True)
    # A bad address is a clear message, nothing created.
    response = as_root.post("/admin/users", {"email": "not an address"})
    assert response.status_code == 400 and "is not a usable e-mail address" in response.get_data(as_text=True)
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(User))) == 2


def test_a_disabled_user_cannot_log_in_and_their_session_and_tokens_are_refused(app, as_root, alice, seed):
    token = seed.token(alice)
    session = Browser(app.test_client())
    session.login("alice@example.com")
    assert session.get("/lists/").status_code == 200
    response = as_root.post(f"/admin/users/{alice}/disable", follow_redirects=True)
    assert response.status_code == 200 and "disabled" in response.get_data(as_text=True)
    assert session.get("/lists/").status_code == 302  # back to the login page
    again = Browser(app.test_client())
    response = again.login("alice@example.com")
    assert response.status_code == 200
    assert "This account is disabled" in response.get_data(as_text=True)
    answer = app.test_client().get("/api/v1/lists", headers=bearer(token))
    assert answer.status_code == 401 and "disabled" in answer.get_json()["error"]
    # Enabled again: the same password and token work.
    as_root.post(f"/admin/users/{alice}/enable")
    assert Browser(app.test_client()).login("alice@example.com").status_code == 302
    assert app.test_client().get("/api/v1/lists", headers=bearer(token)).status_code == 200


def test_reset_password_shows_a_new_one_once_and_ends_the_old_sessions(app, as_root, alice):
    session = Browser(app.test_client())
    session.login("alice@example.com")
    response = as_root.post(f"/admin/users/{alice}/password")
    assert response.status_code == 200
    password = re.search(r'<code class="password">([^<]+)</code>', response.get_data(as_text=True)).group(1)
    assert session.get("/lists/").status_code == 302
    assert Browser(app.test_client()).login("alice@example.com").status_code == 200  # the old password fails
    assert Browser(app.test_client()).login("alice@example.com", password).status_code == 302


def test_delete_a_user_removes_their_rows_but_not_oneself_nor_while_sending(app, as_root, root, bob, bob_objects, seed):
    assert as_root.post(f"/admin/users/{root}/delete").status_code == 400  # never yourself
    assert seed.get(User, root) is not None

    def set_state(state):
        def run(session):
            session.get(Campaign, bob_objects["campaign"]).status = state
            session.commit()
        seed.query(run)

    set_state("running")
    response = as_root.post(f"/admin/users/{bob}/delete")
    assert response.status_code == 400 and "running" in response.get_data(as_text=True)
    assert seed.get(User, bob) is not None
    set_state("cancelled")
    response = as_root.post(f"/admin/users/{bob}/delete", follow_redirects=True)
    assert response.status_code == 200 and "bob@example.com" in response.get_data(as_text=True)
    assert seed.get(User, bob) is None
    assert seed.get(MailingList, bob_objects["list"]) is None
    assert seed.get(Campaign, bob_objects["campaign"]) is None


def test_admin_api_users(app, root, seed):
    token = seed.token(root)
    client = app.test_client()
    created = client.post("/api/v1/admin/users", headers=bearer(token), json={"email": "api@example.com"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    user_id, password = body["id"], body["password"]
    assert body["email"] == "api@example.com" and body["is_admin"] is False and body["disabled"] is False
    listed = client.get("/api/v1/admin/users", headers=bearer(token)).get_json()
    assert {u["email"] for u in listed["users"]} == {"root@example.com", "api@example.com"}
    assert all("password" not in u and "password_hash" not in u for u in listed["users"])
    assert Browser(app.test_client()).login("api@example.com", password).status_code == 302
    bad = client.post("/api/v1/admin/users", headers=bearer(token), json={"email": "api@example.com"})
    assert bad.status_code == 400 and "already exists" in bad.get_json()["error"]
    assert client.post(f"/api/v1/admin/users/{user_id}/disable", headers=bearer(token)).get_json()["disabled"] is True
    assert Browser(app.test_client()).login("api@example.com", password).status_code == 200
    assert client.post(f"/api/v1/admin/users/{user_id}/enable", headers=bearer(token)).get_json()["disabled"] is False
    reset = client.post(f"/api/v1/admin/users/{user_id}/password", headers=bearer(token)).get_json()
    assert Browser(app.test_client()).login("api@example.com", reset["password"]).status_code == 302
    assert client.delete(f"/api/v1/admin/users/{user_id}", headers=bearer(token)).status_code == 204
    assert client.get(f"/api/v1/admin/users/{user_id}", headers=bearer(token)).status_code == 404
    assert client.delete(f"/api/v1/admin/users/{root}", headers=bearer(token)).status_code == 400
