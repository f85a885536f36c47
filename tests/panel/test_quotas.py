"""Quotas per user (issue 10 point 3): set by an admin (page and API, in the audit log); lists and
recipients stored refused past theirs; a campaign start refused past the campaigns running at
once or with the day's / month's letters used up; while it sends, the daemon's dispatch hands
no more of the user's letters than the day and month allow, and the campaign page says why."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from panel.daemon.loop import DaemonState, run_round
from panel.models import AuditEntry, Campaign, Delivery
from panel.services import quotas
from tests.panel.conftest import Browser
from tests.panel.test_admin_users import as_root, bearer, root  # noqa: F401  (fixtures)


def set_quota(as_root: Browser, user_id: int, **values) -> None:  # noqa: F811
    form = {"letters_per_day": "", "letters_per_month": "", "recipients": "", "lists": "", "running_campaigns": ""}
    form.update({key: str(value) for key, value in values.items()})
    response = as_root.post(f"/admin/users/{user_id}/quota", form)
    assert response.status_code == 302, response.get_data(as_text=True)


def test_admin_sets_quotas_on_the_page_and_api_and_they_are_logged(app, as_root, root, alice, seed):  # noqa: F811
    set_quota(as_root, alice, letters_per_day=100, lists=2)
    assert seed.query(lambda s: quotas.quota_of(alice).letters_per_day) == 100
    page = as_root.get(f"/admin/users/{alice}").get_data(as_text=True)
    assert 'value="100"' in page
    bad = as_root.post(f"/admin/users/{alice}/quota", {"letters_per_day": "-5"})
    assert bad.status_code == 400 and "0 or more" in bad.get_data(as_text=True)
    client = app.test_client()
    answer = client.put(f"/api/v1/admin/users/{alice}/quota", headers=bearer(seed.token(root)),
                        json={"letters_per_month": 1000, "lists": None})
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["letters_per_month"] == 1000 and answer.get_json()["lists"] is None
    assert answer.get_json()["letters_per_day"] == 100  # untouched: not sent
    wrong = client.put(f"/api/v1/admin/users/{alice}/quota", headers=bearer(seed.token(root)), json={"letters": 5})
    assert wrong.status_code == 400 and "letters_per_day" in wrong.get_json()["error"]
    logged = seed.query(lambda s: list(s.scalars(select(AuditEntry.action).where(AuditEntry.action == "quota.changed"))))
    assert len(logged) == 2


def test_lists_and_recipients_past_the_quota_are_refused(app, as_root, alice, seed):  # noqa: F811
    set_quota(as_root, alice, lists=1, recipients=2)
    token = seed.token(alice)
    client = app.test_client()
    first = client.post("/api/v1/lists", headers=bearer(token), json={"name": "one"})
    assert first.status_code == 201
    second = client.post("/api/v1/lists", headers=bearer(token), json={"name": "two"})
    assert second.status_code == 400 and "quota of 1 list" in second.get_json()["error"]
    list_id = first.get_json()["id"]
    rows = [{"email": f"r{n}@example.org"} for n in range(3)]
    answer = client.post(f"/api/v1/lists/{list_id}/recipients", headers=bearer(token), json=rows)
    assert answer.status_code == 400 and "quota of 2 recipients" in answer.get_json()["error"]
    assert client.get(f"/api/v1/lists/{list_id}", headers=bearer(token)).get_json()["recipient_count"] == 0
    assert client.post(f"/api/v1/lists/{list_id}/recipients", headers=bearer(token), json=rows[:2]).status_code == 200


@pytest.fixture
def alices_campaign(seed, alice) -> int:
    list_id = seed.list(alice, "news", [{"email": f"r{n}@example.org", "name": "R"} for n in range(5)])
    seed.server(alice)
    return seed.campaign(alice, [list_id])


def test_a_start_past_the_running_campaigns_or_a_used_up_day_is_refused(app, as_root, alice, alices_campaign, seed):  # noqa: F811
    set_quota(as_root, alice, running_campaigns=0)
    token = seed.token(alice)
    client = app.test_client()
    refused = client.post(f"/api/v1/campaigns/{alices_campaign}/start", headers=bearer(token))
    assert refused.status_code == 409 or refused.status_code == 400
    assert "at most 0 campaigns running at once" in refused.get_json()["error"]
    set_quota(as_root, alice, letters_per_day=3)
    seed.query(lambda s: (quotas.count_letters(alice, 3), s.commit()))
    refused = client.post(f"/api/v1/campaigns/{alices_campaign}/start", headers=bearer(token))
    assert "daily quota of 3 letters is used up" in refused.get_json()["error"]
    assert seed.get(Campaign, alices_campaign).status == "draft"


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}  # the fake agents listen on loopback


def test_dispatch_stops_at_the_day_quota_and_the_campaign_page_says_so(app, as_root, alice, seed, agents):  # noqa: F811
    set_quota(as_root, alice, letters_per_day=3)
    agents.start().register(app, alice, "worker")
    list_id = seed.list(alice, "news", [{"email": f"r{n}@example.org", "name": "R"} for n in range(5)])
    campaign = seed.campaign(alice, [list_id])
    browser = Browser(app.test_client())
    browser.login("alice@example.com")
    assert browser.post(f"/campaigns/{campaign}/start").status_code == 302
    state = DaemonState()
    for _ in range(2):
        with app.app_context():
            run_round(state)
    handed = seed.query(lambda s: s.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.campaign_id == campaign, Delivery.server_id.is_not(None))))
    assert handed == 3
    page = browser.get(f"/campaigns/{campaign}").get_data(as_text=True)
    assert "daily quota of 3 letters is used up" in page
