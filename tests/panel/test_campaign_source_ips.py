"""A campaign limited to chosen source IPs, not only servers (issue 10 point 5): the dispatch
hands its letters only to those IPs; an IP that is not the user's is refused."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from panel.daemon.loop import DaemonState, run_round
from panel.extensions import db
from panel.models import Campaign, Delivery, ServerIP, User
from panel.services.sending import start_campaign
from panel.services.servers import SourceIP, register_server


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8", "DISPATCH_WINDOW": 1000, "DISPATCH_BATCH_SIZE": 1000}


def _ip_id(seed, ip):
    return seed.query(lambda s: s.scalar(select(ServerIP.id).where(ServerIP.ip == ip)))


def test_a_campaign_limited_to_one_ip_of_a_two_ip_server_sends_only_from_it(app, seed, alice, agents):
    agent = agents.start()
    with app.app_context():
        register_server(db.session.get(User, alice), name="two IPs", host="127.0.0.1", port=agent.port,
                        agent_key=agent.key, fingerprint=agent.fingerprint,
                        ips=[SourceIP("127.0.0.2", "ip2.worker.test"), SourceIP("127.0.0.3", "ip3.worker.test")])
        db.session.commit()
    list_id = seed.list(alice, "readers", [{"email": f"r{n}@example.org", "name": f"R{n}"} for n in range(60)])
    campaign_id = seed.campaign(alice, [list_id], source_ips=[_ip_id(seed, "127.0.0.3")])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
        run_round(DaemonState())
    split = seed.query(lambda s: dict(s.execute(
        select(Delivery.source_ip, func.count()).where(Delivery.campaign_id == campaign_id)
        .group_by(Delivery.source_ip)).all()))
    assert split == {"127.0.0.3": 60}


def test_the_api_takes_source_ips_and_refuses_another_users_ip(client, seed, alice, bob):
    token = seed.token(alice)
    seed.server(alice, ips=("192.0.2.10", "192.0.2.11"))
    seed.server(bob, "bob's", ips=("198.51.100.7",))
    list_id = seed.list(alice, "readers", [{"email": "r@example.org"}])
    body = {"name": "n", "subject": "s", "from_email": "a@example.com", "text": "hi {{ unsubscribe_url }}",
            "lists": [list_id]}
    headers = {"Authorization": f"Bearer {token}"}
    mine = _ip_id(seed, "192.0.2.11")
    response = client.post("/api/v1/campaigns", json={**body, "source_ips": [mine]}, headers=headers)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["source_ips"] == [{"id": mine, "ip": "192.0.2.11"}]
    assert seed.query(lambda s: [ip.ip for ip in s.get(Campaign, response.get_json()["id"]).source_ips]) == ["192.0.2.11"]
    theirs = _ip_id(seed, "198.51.100.7")
    response = client.post("/api/v1/campaigns", json={**body, "source_ips": [theirs]}, headers=headers)
    assert response.status_code == 400
    assert f"no source IP with id {theirs} among yours" in response.get_json()["error"]


def test_the_composer_offers_each_ip_and_keeps_the_choice(as_alice, seed, alice):
    seed.server(alice, ips=("192.0.2.10", "192.0.2.11"))
    list_id = seed.list(alice, "readers", [{"email": "r@example.org"}])
    chosen = _ip_id(seed, "192.0.2.11")
    page = as_alice.get("/campaigns/new").get_data(as_text=True)
    assert "192.0.2.10 on worker 1" in page and "192.0.2.11 on worker 1" in page
    response = as_alice.post("/campaigns/new", {
        "name": "n", "subject": "s", "from_email": "a@example.com", "format": "plain", "text": "hi {{ unsubscribe_url }}",
        "encoding": "quoted-printable", "lists": str(list_id), "priority": "5", "source_ips": str(chosen)})
    assert response.status_code == 302, response.get_data(as_text=True)
    campaign_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
    assert seed.query(lambda s: [ip.ip for ip in s.get(Campaign, campaign_id).source_ips]) == ["192.0.2.11"]
    assert "<code>192.0.2.11</code>" in as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)


def test_a_campaign_whose_chosen_ips_are_all_inactive_does_not_start(app, seed, alice):
    seed.server(alice, ips=("192.0.2.10", "192.0.2.11"))
    list_id = seed.list(alice, "readers", [{"email": "r@example.org"}])
    chosen = _ip_id(seed, "192.0.2.11")
    campaign_id = seed.campaign(alice, [list_id], subject="News", text="Hi\n{{ unsubscribe_url }}\n", source_ips=[chosen])
    from panel.services.sending import SendingError

    with app.app_context():
        db.session.get(ServerIP, chosen).active = False
        db.session.commit()
        with pytest.raises(SendingError, match="none of the chosen source IPs is active"):
            start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.rollback()
    assert seed.get(Campaign, campaign_id).status == "draft"
