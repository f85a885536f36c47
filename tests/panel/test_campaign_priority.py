"""A campaign's priority (1-10, default 5): its share of each server among the same user's running
campaigns (issue 9 point 7). Set in the composer and by POST /api/v1/campaigns, changed while the
campaign runs on its page and by PATCH /api/v1/campaigns/<id>."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select

from panel.extensions import db
from panel.models import Campaign, User
from panel.services.sending import set_campaign_state, start_campaign

PEOPLE = [{"email": "ann@example.org", "name": "Ann"}, {"email": "bob@example.org", "name": "Bob"}]


@pytest.fixture
def people(seed, alice):
    return seed.list(alice, "People", PEOPLE)


def form(list_id, **overrides):
    data = {"name": "Spring news", "subject": "News for {{ name }}", "from_email": "news@example.com",
            "from_name": "", "reply_to": "", "format": "plain", "text": "Hi {{ name }}\nUnsubscribe: {{ unsubscribe_url }}\n",
            "html": "", "encoding": "quoted-printable", "lists": [list_id], "exclude_lists": []}
    data.update(overrides)
    return data


def errors(response):
    return [html.unescape(m) for m in re.findall(r'<p class="error">(.*?)</p>', response.get_data(as_text=True))]


def priority(seed, campaign_id):
    return seed.get(Campaign, campaign_id).priority


def campaigns(seed):
    return seed.query(lambda s: [(c.name, c.priority) for c in s.scalars(select(Campaign).order_by(Campaign.id))])


def started(app, seed, user_id, list_id, state="running"):
    """A campaign of the user's, started (and paused or cancelled if asked)."""
    server_id = seed.server(user_id)
    campaign_id = seed.campaign(user_id, [list_id], servers=[server_id])
    with app.app_context():
        user, campaign = db.session.get(User, user_id), db.session.get(Campaign, campaign_id)
        start_campaign(user, campaign)
        if state != "running":
            set_campaign_state(user, campaign, {"paused": "pause", "cancelled": "cancel"}[state])
        db.session.commit()
    return campaign_id


# -- the composer -----------------------------------------------------------------------------

HELP = ("A campaign&#39;s share of each server among your running campaigns; your campaigns together share "
        "evenly with other users&#39;")


def test_the_composer_offers_priorities_with_five_chosen(as_alice, people):
    page = as_alice.get("/campaigns/new").get_data(as_text=True)
    assert '<select id="priority" name="priority">' in page
    assert '<option selected value="5">5 (default)</option>' in page
    assert '<option value="1">1 (lowest)</option>' in page and '<option value="10">10 (highest)</option>' in page
    assert HELP in page


def test_the_composer_saves_the_priority_and_edits_it(as_alice, seed, people):
    response = as_alice.post("/campaigns/new", form(people, priority="8"))
    assert response.status_code == 302, errors(response)
    assert campaigns(seed) == [("Spring news", 8)]
    campaign_id = seed.query(lambda s: s.scalar(select(Campaign.id)))
    edit = as_alice.get(f"/campaigns/{campaign_id}/edit").get_data(as_text=True)
    assert '<option selected value="8">8</option>' in edit
    assert as_alice.post(f"/campaigns/{campaign_id}/edit", form(people, priority="2")).status_code == 302
    assert campaigns(seed) == [("Spring news", 2)]


def test_a_composer_post_without_a_priority_gets_the_default(as_alice, seed, people):
    assert as_alice.post("/campaigns/new", form(people)).status_code == 302
    assert campaigns(seed) == [("Spring news", 5)]


@pytest.mark.parametrize("value", ["0", "11", "high", "5.5", ""])
def test_a_bad_priority_in_the_composer_is_refused(as_alice, seed, people, value):
    response = as_alice.post("/campaigns/new", form(people, priority=value))
    assert response.status_code == 400
    assert "the priority must be a whole number from 1 (lowest) to 10 (highest)" in errors(response)
    assert campaigns(seed) == []


# -- the campaign page: changed while it runs --------------------------------------------------

def test_the_page_shows_the_priority_and_a_running_campaigns_can_change(as_alice, app, seed, alice, people):
    campaign_id = started(app, seed, alice, people)
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert f'action="/campaigns/{campaign_id}/priority"' in page and HELP in page
    response = as_alice.post(f"/campaigns/{campaign_id}/priority", {"priority": "9"})
    assert response.status_code == 302
    assert priority(seed, campaign_id) == 9
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert "Priority 5 → 9: the campaign&#39;s share of each server changes from the daemon&#39;s next round." in page
    assert '<option selected value="9">9</option>' in page
    as_alice.post(f"/campaigns/{campaign_id}/priority", {"priority": "9"})
    assert "The priority was already 9: nothing changed." in as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)


def test_a_paused_campaigns_priority_can_change_too(as_alice, app, seed, alice, people):
    campaign_id = started(app, seed, alice, people, state="paused")
    assert as_alice.post(f"/campaigns/{campaign_id}/priority", {"priority": "1"}).status_code == 302
    assert priority(seed, campaign_id) == 1


def test_a_finished_campaigns_priority_cannot_change(as_alice, app, seed, alice, people):
    campaign_id = started(app, seed, alice, people, state="cancelled")
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert f'action="/campaigns/{campaign_id}/priority"' not in page
    response = as_alice.post(f"/campaigns/{campaign_id}/priority", {"priority": "9"})
    assert response.status_code == 302
    assert "the campaign is cancelled: its priority no longer matters" in as_alice.get(
        f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert priority(seed, campaign_id) == 5


@pytest.mark.parametrize("value", ["0", "11", "fast", ""])
def test_a_bad_priority_on_the_page_is_refused(as_alice, app, seed, alice, people, value):
    campaign_id = started(app, seed, alice, people)
    response = as_alice.post(f"/campaigns/{campaign_id}/priority", {"priority": value})
    assert response.status_code == 400
    assert "the priority must be a whole number from 1 (lowest) to 10 (highest)" in errors(response)
    assert priority(seed, campaign_id) == 5


def test_a_priority_change_without_the_csrf_token_is_refused(as_alice, app, seed, alice, people):
    campaign_id = started(app, seed, alice, people)
    response = as_alice.post(f"/campaigns/{campaign_id}/priority", {"priority": "9"}, csrf=False)
    assert response.status_code == 400
    assert priority(seed, campaign_id) == 5


def test_another_users_campaign_is_404(as_alice, app, seed, bob):
    bobs_list = seed.list(bob, "Bob's", PEOPLE)
    campaign_id = started(app, seed, bob, bobs_list)
    assert as_alice.post(f"/campaigns/{campaign_id}/priority", {"priority": "9"}).status_code == 404
    assert priority(seed, campaign_id) == 5


# -- the JSON API -------------------------------------------------------------------------------

@pytest.fixture
def api(client, seed, alice):
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}

    def call(method, url, body=None):
        return client.open("/api/v1" + url, method=method, headers=headers, json=body)

    return call


def body(list_id, **overrides):
    data = {"name": "Spring", "subject": "Hi {{ name }}", "from_email": "news@example.com",
            "text": "Hello {{ name }}\n{{ unsubscribe_url }}", "lists": [list_id]}
    data.update(overrides)
    return data


def test_api_creates_with_a_priority_or_the_default(api, seed, people):
    reply = api("POST", "/campaigns", body(people, priority=10))
    assert reply.status_code == 201, reply.get_json()
    assert reply.get_json()["priority"] == 10
    reply = api("POST", "/campaigns", body(people, name="Plain"))
    assert reply.get_json()["priority"] == 5
    assert api("GET", f"/campaigns/{reply.get_json()['id']}").get_json()["priority"] == 5
    assert campaigns(seed) == [("Spring", 10), ("Plain", 5)]


@pytest.mark.parametrize("value", [0, 11, -1, 5.5, "5", True, None, [5]])
def test_api_refuses_a_bad_priority_on_create(api, seed, people, value):
    reply = api("POST", "/campaigns", body(people, priority=value))
    assert reply.status_code == 400
    assert "priority must be a whole number from 1 (lowest) to 10 (highest)" in reply.get_json()["error"]
    assert campaigns(seed) == []


def test_api_changes_a_running_campaigns_priority(api, app, seed, alice, people):
    campaign_id = started(app, seed, alice, people)
    reply = api("PATCH", f"/campaigns/{campaign_id}", {"priority": 2})
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["priority"] == 2 and reply.get_json()["status"] == "running"
    assert priority(seed, campaign_id) == 2


@pytest.mark.parametrize(("patch", "message"), [
    ({"priority": 0}, "priority must be a whole number from 1 (lowest) to 10 (highest)"),
    ({"priority": "high"}, "priority must be a whole number from 1 (lowest) to 10 (highest)"),
    ({"priority": False}, "priority must be a whole number from 1 (lowest) to 10 (highest)"),
    ({}, 'send {"priority": 1-10}'),
    ({"priority": 3, "name": "x"}, "only priority can be changed here (unknown or fixed field(s): name)"),
])
def test_api_refuses_a_bad_patch_and_changes_nothing(api, app, seed, alice, people, patch, message):
    campaign_id = started(app, seed, alice, people)
    reply = api("PATCH", f"/campaigns/{campaign_id}", patch)
    assert reply.status_code == 400, reply.get_json()
    assert message in reply.get_json()["error"]
    assert priority(seed, campaign_id) == 5 and seed.get(Campaign, campaign_id).name == "Spring news"


def test_api_refuses_a_patch_that_is_not_an_object(api, app, seed, alice, people):
    campaign_id = started(app, seed, alice, people)
    reply = api("PATCH", f"/campaigns/{campaign_id}", [3])
    assert reply.status_code == 400 and reply.get_json()["error"] == "send a JSON object"


def test_api_a_finished_campaigns_priority_is_a_conflict(api, app, seed, alice, people):
    campaign_id = started(app, seed, alice, people, state="cancelled")
    reply = api("PATCH", f"/campaigns/{campaign_id}", {"priority": 9})
    assert reply.status_code == 409
    assert "the campaign is cancelled: its priority no longer matters" in reply.get_json()["error"]
    assert priority(seed, campaign_id) == 5


def test_api_another_users_campaign_is_404(api, app, seed, bob):
    bobs_list = seed.list(bob, "Bob's", PEOPLE)
    campaign_id = started(app, seed, bob, bobs_list)
    reply = api("PATCH", f"/campaigns/{campaign_id}", {"priority": 9})
    assert reply.status_code == 404
    assert priority(seed, campaign_id) == 5


def test_a_read_only_token_cannot_patch(client, app, seed, alice, people):
    campaign_id = started(app, seed, alice, people)
    with app.app_context():
        from panel.services.users import create_api_token

        token = create_api_token(db.session.get(User, alice), "reader", scope="read")
        db.session.commit()
    reply = client.patch(f"/api/v1/campaigns/{campaign_id}", headers={"Authorization": f"Bearer {token}"},
                         json={"priority": 9})
    assert reply.status_code == 403
    assert priority(seed, campaign_id) == 5


# -- the daemon uses what the user set -----------------------------------------------------------

@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8", "DISPATCH_WINDOW": 400, "DISPATCH_BATCH_SIZE": 100}


def test_priorities_set_through_the_api_share_a_server(api, app, seed, alice, agents):
    """Two running campaigns of one user on one server, priorities 3 and 1 (set while they run):
    one round fills the window of 400 with 300 and 100 of their letters."""
    from sqlalchemy import func

    from panel.daemon.loop import DaemonState, run_round
    from panel.models import Delivery

    server_id = agents.start().register(app, alice, "worker")
    ids = []
    for name in ("big", "small"):
        list_id = seed.list(alice, name, [{"email": f"{name}{n}@example.org", "name": "R"} for n in range(1000)])
        campaign_id = seed.campaign(alice, [list_id], name=name, servers=[server_id])
        assert api("POST", f"/campaigns/{campaign_id}/start").status_code == 200
        ids.append(campaign_id)
    assert api("PATCH", f"/campaigns/{ids[0]}", {"priority": 3}).status_code == 200
    assert api("PATCH", f"/campaigns/{ids[1]}", {"priority": 1}).status_code == 200
    with app.app_context():
        run_round(DaemonState())
    taken = seed.query(lambda s: dict(s.execute(
        select(Delivery.campaign_id, func.count()).where(Delivery.server_id == server_id)
        .group_by(Delivery.campaign_id)).all()))
    assert taken == {ids[0]: 300, ids[1]: 100}
