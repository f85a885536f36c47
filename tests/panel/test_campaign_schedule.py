"""A campaign's scheduled start (issue 10 point 5): set in the composer (date, time, IANA zone)
or the API (ISO 8601 with offset), kept in UTC, shown back in its zone, unscheduled by a button or
DELETE; the daemon's global work starts it when its time comes, through the same start as a
manual one (quotas, recipients, the audit log), exactly once."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from panel.daemon.loop import DaemonState, global_work
from panel.extensions import db
from panel.models import AuditEntry, Campaign, Delivery
from panel.services.schedule import start_due_campaigns


@pytest.fixture
def token(seed, alice):
    return seed.token(alice)


@pytest.fixture
def readers(seed, alice):
    return seed.list(alice, "Readers", [{"email": f"r{n}@example.org", "name": f"R{n}"} for n in range(3)])


@pytest.fixture
def campaign_id(seed, alice, readers):
    seed.server(alice)
    return seed.campaign(alice, [readers])


def _api(client, token, method, url, json=None):
    return client.open("/api/v1" + url, method=method, json=json, headers={"Authorization": f"Bearer {token}"})


def _soon(minutes=90):
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=minutes)


def _letters(seed, campaign_id):
    return seed.query(lambda s: s.scalar(select(func.count()).where(Delivery.campaign_id == campaign_id)))


def _make_due(app, campaign_id):
    with app.app_context():
        db.session.execute(update(Campaign).where(Campaign.id == campaign_id)
                           .values(scheduled_at=datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=1)))
        db.session.commit()


def test_scheduling_through_the_api_keeps_utc_and_the_zone(client, token, seed, campaign_id):
    when = _soon().astimezone(timezone(timedelta(hours=9)))  # given with a +09:00 offset
    response = _api(client, token, "PUT", f"/campaigns/{campaign_id}/schedule",
                    {"scheduled_at": when.isoformat(), "time_zone": "Asia/Tokyo"})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "draft"
    assert body["scheduled_at"] == when.astimezone(timezone.utc).replace(tzinfo=None).isoformat() + "Z"
    assert body["time_zone"] == "Asia/Tokyo"
    stored = seed.get(Campaign, campaign_id)
    assert stored.scheduled_at == when.astimezone(timezone.utc).replace(tzinfo=None)
    assert stored.schedule_zone == "Asia/Tokyo"
    # unscheduled by DELETE
    response = _api(client, token, "DELETE", f"/campaigns/{campaign_id}/schedule")
    assert response.status_code == 200 and response.get_json()["scheduled_at"] is None
    assert seed.get(Campaign, campaign_id).scheduled_at is None


def test_creating_a_scheduled_campaign_through_the_api(client, token, readers):
    when = _soon()
    response = _api(client, token, "POST", "/campaigns", {
        "name": "Later", "subject": "Hi", "from_email": "news@example.com", "text": "Hi {{ unsubscribe_url }}",
        "lists": [readers], "scheduled_at": when.isoformat(), "time_zone": "Europe/Paris"})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["scheduled_at"] == when.replace(tzinfo=None).isoformat() + "Z"


@pytest.mark.parametrize(("body", "message"), [
    ({"scheduled_at": "2020-01-01T10:00:00+00:00"}, "is in the past"),
    ({"scheduled_at": "tomorrow at ten"}, "not a date and time"),
    ({"scheduled_at": "2099-01-01T10:00:00"}, "give its offset"),
    ({"scheduled_at": "2099-01-01T10:00:00+01:00", "time_zone": "Mars/Olympus"}, "Mars/Olympus is not a time zone"),
    ({}, "send {\"scheduled_at\""),
])
def test_a_bad_schedule_is_a_400_that_says_why(client, token, seed, campaign_id, body, message):
    response = _api(client, token, "PUT", f"/campaigns/{campaign_id}/schedule", body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert seed.get(Campaign, campaign_id).scheduled_at is None


def test_scheduling_and_unscheduling_in_the_composer(as_alice, seed, alice, readers):
    seed.server(alice)
    form = {"name": "Later", "subject": "Hi", "from_email": "news@example.com", "format": "plain",
            "text": "Hi {{ unsubscribe_url }}", "encoding": "quoted-printable", "lists": str(readers),
            "priority": "5", "schedule": "y", "schedule_date": "2099-03-01", "schedule_time": "09:30",
            "schedule_zone": "America/New_York"}
    response = as_alice.post("/campaigns/new", form)
    assert response.status_code == 302, response.get_data(as_text=True)
    campaign_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
    stored = seed.get(Campaign, campaign_id)
    assert stored.scheduled_at == datetime(2099, 3, 1, 14, 30)  # 09:30 EST is 14:30 UTC
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert "2099-03-01 09:30 America/New_York" in page and "Unschedule" in page
    response = as_alice.post(f"/campaigns/{campaign_id}/unschedule")
    assert response.status_code == 302
    assert seed.get(Campaign, campaign_id).scheduled_at is None
    assert 'id="scheduled"' not in as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)


@pytest.mark.parametrize(("fields", "message"), [
    ({"schedule_date": "2001-03-01", "schedule_time": "09:30", "schedule_zone": "UTC"}, "is in the past"),
    ({"schedule_date": "2099-03-01", "schedule_time": "09:30", "schedule_zone": "Nowhere/Land"}, "Not a valid choice"),
    ({"schedule_date": "", "schedule_time": "09:30", "schedule_zone": "UTC"}, "Give the date"),
])
def test_a_bad_schedule_in_the_composer_is_a_form_error(as_alice, seed, alice, readers, fields, message):
    form = {"name": "Later", "subject": "Hi", "from_email": "news@example.com", "format": "plain",
            "text": "Hi {{ unsubscribe_url }}", "encoding": "quoted-printable", "lists": str(readers),
            "priority": "5", "schedule": "y", **fields}
    response = as_alice.post("/campaigns/new", form)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Campaign))) == 0


def test_the_daemon_starts_a_due_campaign_once_and_not_an_early_one(app, client, token, seed, campaign_id, alice, readers):
    early = seed.campaign(alice, [readers], name="Early")
    for cid in (campaign_id, early):
        assert _api(client, token, "PUT", f"/campaigns/{cid}/schedule",
                    {"scheduled_at": _soon().isoformat()}).status_code == 200
    _make_due(app, campaign_id)
    with app.app_context():
        global_work(DaemonState())
    due, not_yet = seed.get(Campaign, campaign_id), seed.get(Campaign, early)
    assert due.status == "running" and due.total == 3 and due.scheduled_at is None
    assert not_yet.status == "draft" and not_yet.scheduled_at is not None
    assert _letters(seed, campaign_id) == 3 and _letters(seed, early) == 0
    audit = seed.query(lambda s: s.scalars(select(AuditEntry.action).where(
        AuditEntry.target.like(f"campaign {campaign_id} %"))).all())
    assert "campaign.started" in audit
    # a second tick (or a second daemon) finds nothing more to start
    with app.app_context():
        assert start_due_campaigns() == []
        db.session.commit()
    assert _letters(seed, campaign_id) == 3


def test_two_daemons_racing_start_it_once(app, client, token, seed, campaign_id):
    """A second daemon that read the campaign as due before the first one started it: its
    conditional UPDATE finds the schedule gone and it starts nothing."""
    _api(client, token, "PUT", f"/campaigns/{campaign_id}/schedule", {"scheduled_at": _soon().isoformat()})
    _make_due(app, campaign_id)
    from panel.services import schedule

    with app.app_context():
        seen = schedule.due_campaign_ids()
        assert seen == [campaign_id]
        assert schedule.start_due_campaigns() == [campaign_id]
        db.session.commit()
        # the other daemon goes on with what it had read
        assert schedule.start_scheduled(seen[0]) is False
        db.session.commit()
    assert _letters(seed, campaign_id) == 3


def test_a_scheduled_start_that_cannot_start_says_why_on_the_page(app, as_alice, client, token, seed, alice):
    empty = seed.list(alice, "Empty")
    cid = seed.campaign(alice, [empty], subject="News", text="Hello\n{{ unsubscribe_url }}\n")
    _api(client, token, "PUT", f"/campaigns/{cid}/schedule", {"scheduled_at": _soon().isoformat()})
    _make_due(app, cid)
    with app.app_context():
        assert start_due_campaigns() == []
        db.session.commit()
    stored = seed.get(Campaign, cid)
    assert stored.status == "draft" and stored.scheduled_at is None
    assert "add a server first" in stored.schedule_error
    page = as_alice.get(f"/campaigns/{cid}").get_data(as_text=True)
    assert "The scheduled start failed" in page and "add a server first" in page
