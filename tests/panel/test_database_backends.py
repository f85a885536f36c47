"""What differs between SQLite and PostgreSQL and must not show: each test runs on both."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from panel.daemon.dispatch import dispatch_server
from panel.daemon.outcomes import apply_events
from panel.extensions import db
from panel.models import Campaign, Delivery, Server, User
from panel.services.sending import start_campaign
from tests.panel.agents import TakingAgent

HUGE = 99_999_999_999  # past the INTEGER range of the ids, which PostgreSQL refuses to compare with


@pytest.mark.parametrize("url", [f"/api/v1/lists/{HUGE}", f"/api/v1/campaigns/{HUGE}/stats",
                                 f"/api/v1/servers/{HUGE}/config", f"/campaigns/{HUGE}", f"/lists/{HUGE}",
                                 f"/servers/{HUGE}"])
def test_an_id_past_the_range_in_a_url_is_a_404(as_alice, seed, alice, url):
    headers = {"Authorization": f"Bearer {seed.token(alice)}"} if url.startswith("/api/") else {}
    assert as_alice.get(url, headers=headers).status_code == 404


@pytest.mark.parametrize("field", ["lists", "exclude_lists", "servers"])
def test_an_id_past_the_range_in_a_request_is_named_as_missing(client, seed, alice, field):
    list_id = seed.list(alice, "People", [{"email": "ann@example.org"}])
    body = {"name": "n", "subject": "s", "from_email": "news@example.com", "text": "t", "lists": [list_id]}
    body[field] = body.get(field, []) + [HUGE] if field == "lists" else [HUGE]
    response = client.post("/api/v1/campaigns", json=body, headers={"Authorization": f"Bearer {seed.token(alice)}"})
    assert response.status_code == 400
    assert f"id {HUGE} among yours" in response.get_json()["error"]


def test_a_number_past_the_range_on_the_command_line_is_no_list_of_the_user(runner, seed, alice, tmp_path):
    data = tmp_path / "people.csv"
    data.write_text("email\nann@example.org\n")
    result = runner.invoke(args=["lists", "import", str(HUGE), str(data), "--user", "alice@example.com"])
    assert result.exit_code == 1
    assert f"alice@example.com has no list {HUGE}" in result.stderr


def test_an_agent_event_for_an_id_past_the_range_is_ignored_like_any_unknown_letter(app, seed, alice):
    list_id = seed.list(alice, "People", [{"email": "ann@example.org", "name": "Ann"}])
    server_id = seed.server(alice)
    campaign_id = seed.campaign(alice, [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
        dispatch_server(TakingAgent(), db.session.get(Server, server_id))  # the letter is given to the server
        letter = db.session.scalar(select(Delivery.id))
        changed = apply_events(db.session.get(Server, server_id), [{"id": HUGE, "status": "sent"},
                                                                   {"id": letter, "status": "sent"}])
        db.session.commit()
    assert changed == 1
    assert seed.get(Delivery, letter).status == "sent"


def test_postgresql_plans_each_statement_for_its_values(app, db_backend):
    """A generic plan kept from when a table was small would scan millions of rows per statement."""
    if db_backend != "postgresql":
        pytest.skip("SQLite plans every statement anew")
    with app.app_context():
        assert db.session.scalar(text("SHOW plan_cache_mode")) == "force_custom_plan"
        db.session.rollback()
        assert db.session.scalar(text("SHOW plan_cache_mode")) == "force_custom_plan"
        # What a statement that wants generic plans does after them (start_campaign): the session's
        # own setting comes back, as it is given when connecting.
        db.session.execute(text("SET LOCAL plan_cache_mode = auto"))
        db.session.execute(text("RESET plan_cache_mode"))
        assert db.session.scalar(text("SHOW plan_cache_mode")) == "force_custom_plan"
