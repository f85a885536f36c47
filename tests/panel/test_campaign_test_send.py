"""Sending a test of a campaign (issue 10 point 5): up to five addresses, pushed to one of the
campaign's servers like any letter, marked as a test, and never counted in the campaign nor
suppressing anyone."""

from __future__ import annotations

from email import message_from_bytes

import pytest
from sqlalchemy import select

from panel.daemon.dispatch import dispatch_server
from panel.daemon.outcomes import apply_events, store_bounces
from panel.extensions import db
from panel.models import (Campaign, CampaignBreakdown, CampaignCount, CampaignMinute, Delivery, Server,
                          Suppression, TestLetter)
from tests.panel.agents import RecordingAgent
from worker_agent.render import CompiledCampaign


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}


def _figures(session, campaign_id: int) -> tuple:
    """Every row the campaign's figures are made of."""
    return tuple(
        sorted(tuple(getattr(row, c.name) for c in model.__table__.columns)
               for row in session.scalars(select(model).where(model.campaign_id == campaign_id)))
        for model in (CampaignCount, CampaignMinute, CampaignBreakdown)
    )


def _online(seed, server_id: int) -> None:
    def go(session):
        session.get(Server, server_id).status = "online"
        session.commit()
    seed.query(go)


def test_the_api_refuses_bad_address_lists_and_a_campaign_without_a_server_online(client, seed, alice):
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}
    campaign_id = seed.campaign(alice, [seed.list(alice, "readers", [{"email": "r@example.org", "name": "R"}])])
    url = f"/api/v1/campaigns/{campaign_id}/test"
    for body, said in (
        ({"addresses": []}, "at least one address"),
        ({"addresses": [f"t{n}@example.org" for n in range(6)]}, "at most 5 addresses"),
        ({"addresses": ["ok@example.org", "not-an-address"]}, "not-an-address"),
        ({}, "addresses"),
    ):
        response = client.post(url, json=body, headers=headers)
        assert response.status_code == 400, (body, response.get_json())
        assert said in response.get_json()["error"], (body, response.get_json())
    seed.server(alice)  # registered but never seen online
    response = client.post(url, json={"addresses": ["t@example.org"]}, headers=headers)
    assert response.status_code == 409
    assert "no server of this campaign is online" in response.get_json()["error"]
    assert seed.query(lambda s: s.scalars(select(TestLetter)).all()) == []


def test_a_test_is_pushed_marked_and_its_outcomes_and_bounces_count_nowhere(app, client, seed, alice):
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}
    server_id = seed.server(alice)
    _online(seed, server_id)
    list_id = seed.list(alice, "readers", [{"email": "r@example.org", "name": "R"}])
    campaign_id = seed.campaign(alice, [list_id], subject="News for {{ name }}")
    before = seed.query(lambda s: _figures(s, campaign_id))
    response = client.post(f"/api/v1/campaigns/{campaign_id}/test",
                           json={"addresses": ["ann@example.org", " Bob@Example.org "]}, headers=headers)
    assert response.status_code == 202, response.get_json()
    assert [t["email"] for t in response.get_json()["tests"]] == ["ann@example.org", "bob@example.org"]

    with app.app_context():
        agent = RecordingAgent()
        dispatch_server(agent, db.session.get(Server, server_id))
        dispatch_server(agent, db.session.get(Server, server_id))  # pushed once, not again
    assert len(agent.batches) == 1
    batch = agent.batches[0]
    assert [r["email"] for r in batch["recipients"]] == ["ann@example.org", "bob@example.org"]
    assert all(r["id"] < 0 for r in batch["recipients"])  # never a delivery's id
    assert batch["campaign"]["id"] != campaign_id  # the agent keeps the real campaign's template apart
    # The agent's own renderer makes the letter: the marks are in it.
    letter = CompiledCampaign(batch["campaign"]).render(batch["recipients"][0])
    message = message_from_bytes(letter.data)
    assert message["Subject"] == "[Test] News for R"  # the fields of the lists' first recipient
    assert message["X-Mailfleet-Test"] == "1"

    tests = seed.query(lambda s: s.scalars(select(TestLetter).order_by(TestLetter.id)).all())
    assert [t.status for t in tests] == ["queued", "queued"]
    ann, bob = tests
    with app.app_context():
        server = db.session.get(Server, server_id)
        apply_events(server, [
            {"seq": 1, "id": -ann.id, "status": "delivered", "code": 250, "text": "250 OK"},
            {"seq": 2, "id": -bob.id, "status": "failed", "code": 550, "text": "550 5.1.1 no such user"},
        ])
        bounce = (f"From: MAILER-DAEMON@example.org\r\nTo: {letter.envelope_from}\r\nSubject: Undelivered\r\n"
                  "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n"
                  "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
                  "Final-Recipient: rfc822; ann@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
                  "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n--b--\r\n")
        store_bounces(server, [{"kind": "bounce", "token": batch["recipients"][0]["token"], "raw": bounce}])
        db.session.commit()
    tests = seed.query(lambda s: s.scalars(select(TestLetter).order_by(TestLetter.id)).all())
    assert [(t.status, t.reply) for t in tests] == [("delivered", "250 OK"), ("failed", "550 5.1.1 no such user")]
    assert seed.query(lambda s: s.scalars(select(Suppression)).all()) == []
    assert seed.query(lambda s: _figures(s, campaign_id)) == before
    assert seed.query(lambda s: s.scalars(select(Delivery)).all()) == []
    assert seed.get(Campaign, campaign_id).status == "draft"


def test_the_composer_page_offers_a_test_and_sends_it(as_alice, seed, alice):
    server_id = seed.server(alice)
    _online(seed, server_id)
    campaign_id = seed.campaign(alice, [seed.list(alice, "readers", [{"email": "r@example.org", "name": "R"}])])
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert "Send a test" in page
    response = as_alice.post(f"/campaigns/{campaign_id}/test", {"addresses": "a@example.org, b@example.org"})
    assert response.status_code == 302, response.get_data(as_text=True)
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert "a@example.org" in page and "b@example.org" in page
    response = as_alice.post(f"/campaigns/{campaign_id}/test", {"addresses": "bad one"})
    assert "bad one" in response.get_data(as_text=True)
    assert len(seed.query(lambda s: s.scalars(select(TestLetter)).all())) == 2


class RefusingTests(RecordingAgent):
    """An agent that refuses (a sealed HTTP 400) every test push and takes every other batch."""

    def call(self, path: str, payload: dict, **kwargs: object) -> dict:
        from panel.daemon.agent_client import AgentRefused

        if path == "/v1/batches" and payload["campaign"].get("test"):
            raise AgentRefused('agent answered HTTP 400: "campaign.subject: template error"')
        return super().call(path, payload, **kwargs)


def test_a_test_the_agent_refuses_fails_and_holds_back_no_campaign(app, client, seed, alice):
    """A refused test push is not tried again each round ahead of the campaigns' letters."""
    from panel.services.sending import start_campaign
    from panel.models import User

    headers = {"Authorization": f"Bearer {seed.token(alice)}"}
    server_id = seed.server(alice)
    _online(seed, server_id)
    list_id = seed.list(alice, "readers", [{"email": f"r{n}@example.org", "name": "R"} for n in range(3)])
    running = seed.campaign(alice, [list_id])
    draft = seed.campaign(alice, [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, running))
        db.session.commit()
    assert client.post(f"/api/v1/campaigns/{draft}/test", json={"addresses": ["t@example.org"]},
                       headers=headers).status_code == 202
    with app.app_context():
        agent = RefusingTests()
        dispatch_server(agent, db.session.get(Server, server_id))
    assert [len(batch["recipients"]) for batch in agent.batches] == [3]  # the running campaign's letters
    (letter,) = seed.query(lambda s: s.scalars(select(TestLetter)).all())
    assert letter.status == "failed"
    assert "the agent refused the test" in letter.reply and "template error" in letter.reply
