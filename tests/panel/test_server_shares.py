"""Servers shared by an admin (issue 10 point 3): the admin shares a server of theirs with chosen
users; such a user may choose it for a campaign and the daemon sends their letters through it,
but its pages and API stay the admin's (a 404 to the user: no keys, no settings, no changes)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from panel.daemon.loop import DaemonState, run_round
from panel.models import AuditEntry, Delivery
from tests.panel.conftest import Browser
from tests.panel.test_admin_users import as_root, bearer, root  # noqa: F401  (fixtures)


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}  # the fake agents listen on loopback


def test_a_shared_server_sends_the_users_campaign_but_stays_the_admins(app, as_root, root, alice, bob, seed, agents):  # noqa: F811
    server = agents.start().register(app, root, "fleet 1")
    response = as_root.post(f"/admin/users/{alice}/servers", {"servers": str(server)})
    assert response.status_code == 302, response.get_data(as_text=True)
    assert "fleet 1" in as_root.get(f"/admin/users/{alice}").get_data(as_text=True)

    alice_page = Browser(app.test_client())
    alice_page.login("alice@example.com")
    assert "fleet 1" in alice_page.get("/campaigns/new").get_data(as_text=True)
    for url in (f"/servers/{server}", f"/servers/{server}/jobs.json"):
        assert alice_page.get(url).status_code == 404
    assert "fleet 1" not in alice_page.get("/servers/").get_data(as_text=True)
    token = seed.token(alice)
    client = app.test_client()
    assert client.get(f"/api/v1/servers/{server}/config", headers=bearer(token)).status_code == 404
    assert client.put(f"/api/v1/servers/{server}/config", headers=bearer(token), json={}).status_code == 404

    list_id = seed.list(alice, "news", [{"email": f"r{n}@example.org", "name": "R"} for n in range(4)])
    body = {"name": "Shared", "subject": "Hi", "from_email": "news@example.com", "text": "Hello {{ unsubscribe_url }}",
            "lists": [list_id], "servers": [server]}
    created = client.post("/api/v1/campaigns", headers=bearer(token), json=body)
    assert created.status_code == 201, created.get_json()
    campaign = created.get_json()["id"]
    assert client.post(f"/api/v1/campaigns/{campaign}/start", headers=bearer(token)).status_code == 200
    with app.app_context():
        run_round(DaemonState())
    on_server = seed.query(lambda s: s.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.campaign_id == campaign, Delivery.server_id == server)))
    assert on_server == 4

    # Bob was not given it: he cannot choose it.
    bobs_list = seed.list(bob, "bob's")
    refused = client.post("/api/v1/campaigns", headers=bearer(seed.token(bob)), json={**body, "lists": [bobs_list]})
    assert refused.status_code == 400 and f"no server with id {server}" in str(refused.get_json())
    # Taken back: Alice cannot choose it any more.
    assert as_root.post(f"/admin/users/{alice}/servers", {}).status_code == 302
    again = client.post("/api/v1/campaigns", headers=bearer(token), json=body)
    assert again.status_code == 400 and f"no server with id {server}" in str(again.get_json())
    actions = seed.query(lambda s: list(s.scalars(select(AuditEntry.action).where(AuditEntry.action.like("server.%")))))
    assert actions.count("server.shared") == 1 and actions.count("server.unshared") == 1


def test_only_the_admins_own_servers_can_be_shared(app, root, alice, bob, seed):  # noqa: F811
    bobs_server = seed.server(bob, "bob's own")
    answer = app.test_client().put(f"/api/v1/admin/users/{alice}/servers", headers=bearer(seed.token(root)),
                                   json={"servers": [bobs_server]})
    assert answer.status_code == 400 and "not one of yours" in answer.get_json()["error"]
    own = seed.server(root, "root's own")
    answer = app.test_client().put(f"/api/v1/admin/users/{alice}/servers", headers=bearer(seed.token(root)),
                                   json={"servers": [own]})
    assert answer.status_code == 200 and [s["id"] for s in answer.get_json()["servers"]] == [own]
