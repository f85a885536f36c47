"""The dashboard at / (issue 10 point 2): the user's running and scheduled campaigns with their
progress, their fleet, today's and this month's letters against the quota, and the latest problems,
read from the counts the database keeps; nothing of another user's."""

from __future__ import annotations

import re
from datetime import timedelta

from panel.models import Campaign, CampaignBreakdown, CampaignCount, Server
from panel.models.base import utcnow
from panel.services import quotas


PLAIN = {"subject": "News", "text": "Hello\nBye: {{ unsubscribe_url }}\n"}


def _state(seed, campaign_id: int, **fields) -> None:
    def apply(session):
        campaign = session.get(Campaign, campaign_id)
        for name, value in fields.items():
            setattr(campaign, name, value)
        session.commit()
    seed.query(apply)


def _rows(seed, rows: list) -> None:
    def apply(session):
        session.add_all(rows)
        session.commit()
    seed.query(apply)


def _problem(page: str, text: str) -> str | None:
    """The problem line (an <li> of the problems list) naming `text`, or None."""
    for item in re.findall(r'<li class="problem[^"]*".*?</li>', page, re.S):
        if text in item:
            return item
    return None


def test_the_dashboard_shows_the_users_campaigns_fleet_quota_and_problems(seed, as_alice, alice, bob):
    news = seed.campaign(alice, [seed.list(alice, "news")], name="Winter news", **PLAIN)
    _state(seed, news, status="running", total=200, started_at=utcnow())
    later = seed.campaign(alice, [seed.list(alice, "later")], name="Spring plans", **PLAIN)
    _state(seed, later, scheduled_at=utcnow() + timedelta(days=1), schedule_zone="UTC")
    _rows(seed, [CampaignCount(campaign_id=news, name="status:delivered", n=80),
                 CampaignCount(campaign_id=news, name="status:failed", n=20),
                 CampaignBreakdown(campaign_id=news, dim="provider", key="google", sent=1000, delivered=1000,
                                   complaints=4),
                 CampaignBreakdown(campaign_id=news, dim="provider", key="yahoo", sent=1000, delivered=1000,
                                   complaints=2)])
    up = seed.server(alice, "alpha box")
    down = seed.server(alice, "beta box", ips=("192.0.2.11",))

    def statuses(session):
        session.get(Server, up).status = "online"
        session.get(Server, down).status = "offline"
        session.get(Server, down).last_error = "connection refused"
        quotas.set_quota(alice, {"letters_per_day": 5000})
        session.commit()
    seed.query(statuses)
    # Bob's campaign and server are his alone.
    secret = seed.campaign(bob, [seed.list(bob, "bob's")], name="Bob secret plan", **PLAIN)
    _state(seed, secret, status="running", total=10)
    seed.server(bob, "bob hidden box")

    response = as_alice.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Winter news" in page and "100 of 200" in page  # delivered + failed of the total
    assert "Spring plans" in page
    assert "alpha box" in page and "beta box" in page
    offline = _problem(page, "beta box")
    assert offline is not None and "offline" in offline
    assert _problem(page, "alpha box") is None
    google = _problem(page, "google")
    assert google is not None and "0.40 %" in google and "danger" in google
    yahoo = _problem(page, "yahoo")
    assert yahoo is None or "danger" not in yahoo
    assert "5,000" in page  # the day's quota
    assert "Bob secret plan" not in page and "bob hidden box" not in page

    token = seed.token(alice)
    answer = as_alice.client.get("/api/v1/dashboard", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert [c["name"] for c in body["campaigns"]] == ["Winter news", "Spring plans"]
    assert body["campaigns"][0]["progress"]["done"] == 100
    assert {s["name"]: s["status"] for s in body["servers"]} == {"alpha box": "online", "beta box": "offline"}
    kinds = {(p["kind"], p["level"]) for p in body["problems"]}
    assert ("server_offline", "danger") in kinds and ("complaint_rate", "danger") in kinds
    assert not any("yahoo" in p["text"] for p in body["problems"] if p["level"] == "danger")


def test_the_campaign_list_keeps_its_own_address(as_alice):
    page = as_alice.get("/campaigns/")
    assert page.status_code == 200 and "Campaigns" in page.get_data(as_text=True)
