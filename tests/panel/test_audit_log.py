"""The audit log (issue 10 point 3): who did what and when, from the pages, the API and the CLI
(logins, failed logins, campaigns started / paused / cancelled, lists imported, servers changed
and removed, domains, tokens, users), searchable and downloadable as CSV by an admin only."""

from __future__ import annotations

import csv
import io

import pytest

from sqlalchemy import select

from panel.models import AuditEntry, User
from panel.services.domains import DomainInput, add_domain
from tests.panel.conftest import Browser
from tests.panel.test_admin_users import as_root, bearer, root  # noqa: F401  (fixtures)


def entries(seed) -> list[tuple[str | None, str, str]]:
    return seed.query(lambda s: [(e.actor_email, e.action, e.target)
                                 for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))])


def test_logins_and_failed_logins_are_recorded_with_the_address(app, alice, seed):
    browser = Browser(app.test_client())
    browser.login("alice@example.com", "wrong password!")
    browser.login("alice@example.com")
    rows = seed.query(lambda s: [(e.actor_email, e.action, e.address, e.actor_id)
                                 for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))])
    assert rows == [("alice@example.com", "login.failed", "127.0.0.1", None),
                    ("alice@example.com", "login", "127.0.0.1", alice)]


def add_bobs_domain(session, bob: int) -> int:
    """Added outside any request (as a fixture): not in the log itself."""
    domain = add_domain(session.get(User, bob), DomainInput(name="bob.example", dns_host="127.0.0.1",
                                                            tsig_name="k", tsig_secret="c2VjcmV0"))
    session.commit()
    return domain.id


@pytest.mark.parametrize("app_config", [{"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}])
def test_campaign_server_domain_token_and_list_actions_are_recorded(app, bob, bob_objects, seed, runner, app_config):
    token = seed.token(bob)
    client = app.test_client()
    campaign = bob_objects["campaign"]
    assert client.post(f"/api/v1/campaigns/{campaign}/start", headers=bearer(token)).status_code == 200
    assert client.post(f"/api/v1/campaigns/{campaign}/pause", headers=bearer(token)).status_code == 200
    assert client.post(f"/api/v1/campaigns/{campaign}/cancel", headers=bearer(token)).status_code == 200
    server = bob_objects["server"]
    answer = client.put(f"/api/v1/servers/{server}/config", headers=bearer(token), json={"helo": {"192.0.2.10": "mx.bob.example"}})
    assert answer.status_code == 200, answer.get_json()
    domain = seed.query(lambda s: add_bobs_domain(s, bob))
    answer = client.delete(f"/api/v1/domains/{domain}?keep_records=true", headers=bearer(token))
    assert answer.status_code == 204, answer.get_json()
    answer = client.post(f"/api/v1/lists/{bob_objects['list']}/recipients", headers=bearer(token),
                         json=[{"email": "dave@example.org"}])
    assert answer.status_code in (200, 201), answer.get_json()
    assert runner.invoke(args=["tokens", "create", "bob@example.com", "--name", "ci"]).exit_code == 0
    got = entries(seed)
    actions = [action for _, action, _ in got]
    for expected in ("campaign.started", "campaign.paused", "campaign.cancelled", "server.changed",
                     "domain.removed", "list.imported", "token.created"):
        assert expected in actions, (expected, got)
    assert ("bob@example.com", "campaign.started", f"campaign {campaign} (Spring news)") in got
    assert got[actions.index("domain.removed")][:2] == ("bob@example.com", "domain.removed")
    assert "bob.example" in got[actions.index("domain.removed")][2]
    # The CLI acts as nobody in particular: the entry says so.
    assert got[actions.index("token.created")][0] == "cli"


def test_admin_searches_and_downloads_the_log_and_an_ordinary_user_gets_404(app, as_root, root, alice, seed):  # noqa: F811
    Browser(app.test_client()).login("alice@example.com", "wrong password!")
    as_root.post("/admin/users", {"email": "carol@example.com"})
    page = as_root.get("/admin/audit?q=carol")
    table = page.get_data(as_text=True).split("<table", 1)[1]
    assert page.status_code == 200 and "<code>user.created</code>" in table and "login.failed" not in table
    page = as_root.get("/admin/audit?action=login.failed")
    assert "alice@example.com" in page.get_data(as_text=True)
    download = as_root.get("/admin/audit.csv?q=carol")
    assert download.status_code == 200 and download.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(download.get_data(as_text=True))))
    assert [(r["actor"], r["action"]) for r in rows] == [("root@example.com", "user.created")]
    assert "carol@example.com" in rows[0]["target"] and rows[0]["at"].endswith("Z")
    api = app.test_client().get("/api/v1/admin/audit?q=alice", headers=bearer(seed.token(root)))
    assert [e["action"] for e in api.get_json()["entries"]] == ["login.failed"]
    # An ordinary user: nothing there.
    alice_browser = Browser(app.test_client())
    alice_browser.login("alice@example.com")
    for url in ("/admin/audit", "/admin/audit.csv"):
        assert alice_browser.get(url).status_code == 404
    assert app.test_client().get("/api/v1/admin/audit", headers=bearer(seed.token(alice))).status_code == 404
