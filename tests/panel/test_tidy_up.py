"""Tidying up (issue 10 point 6): lists, campaigns and suppression entries deleted or archived from
their pages and the API, each page saying first what goes with it, each action one transaction and
one audit entry.

- A list goes with its recipients; never while a campaign using it sends; archived, it leaves the
  lists page and the composer's choices until restored.
- A campaign goes with its letters, events, clicks, opens and figures; never while it sends or has
  letters on its servers (409), nor within 30 days of its end if it sent letters (their unsubscribe
  links lead to them). Archived, its letters and events go and its counts, timeline and
  breakdowns stay exactly as they were (the letters' delete triggers must not subtract them).
- Suppression entries go one at a time, chosen, or all those a search matches.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from panel.daemon.outcomes import finish_campaigns
from panel.extensions import db
from panel.models.base import utcnow
from panel.models import (AuditEntry, Campaign, CampaignBreakdown, CampaignCount, CampaignMinute, Click, Delivery,
                          DeliveryEvent, MailingList, Open, Recipient, Suppression, User)
from panel.services import tidy
from panel.services.sending import start_campaign
from panel.services.suppressions import add_suppression
from tests.panel.test_campaign_figures import HAL_NOT_SENT, Sent

PEOPLE = [{"email": f"p{n}@example.org", "name": f"P{n}"} for n in range(30)]


@pytest.fixture
def api(client, seed, alice):
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}

    def call(method: str, url: str, **kwargs):
        return client.open(f"/api/v1{url}", method=method, headers=headers, **kwargs)
    return call


def count(seed, model, *where) -> int:
    return seed.query(lambda s: s.scalar(select(func.count()).select_from(model).where(*where)))


def actions(seed) -> list[tuple[str, str, str]]:
    return seed.query(lambda s: [(e.action, e.target, e.detail) for e in s.scalars(select(AuditEntry)
                                                                                      .order_by(AuditEntry.id))])


def finished(sent: Sent, days_ago: int = tidy.UNSUBSCRIBE_DAYS + 1) -> None:
    """Every letter answered for (eve delivered at last, hal refused) and the campaign finished by the
    daemon, `days_ago` days ago (its letters' unsubscribe links must work 30 days before they may go)."""
    sent.send_everything()
    sent.events(("eve@example.org", "delivered", 5, 0, 250, "250 OK"), (HAL_NOT_SENT, "sent", 5, 1),
                (HAL_NOT_SENT, "failed", 5, 2, 550, "550 5.1.1 no such user"))
    with sent.app.app_context():
        finish_campaigns()
        campaign = db.session.get(Campaign, sent.campaign_id)
        assert campaign.status == "finished"
        campaign.finished_at = utcnow() - timedelta(days=days_ago)
        db.session.commit()


def figures(app, campaign_id: int) -> dict:
    with app.app_context():
        where = lambda model: model.campaign_id == campaign_id  # noqa: E731
        return {
            "counts": sorted(db.session.execute(select(CampaignCount.name, CampaignCount.n).where(where(CampaignCount)))),
            "minutes": sorted(tuple(r) for r in db.session.execute(
                select(CampaignMinute.minute, CampaignMinute.sent, CampaignMinute.delivered, CampaignMinute.deferred,
                       CampaignMinute.failed, CampaignMinute.clicks, CampaignMinute.opens).where(where(CampaignMinute)))),
            "breakdowns": sorted(tuple(r) for r in db.session.execute(
                select(CampaignBreakdown.dim, CampaignBreakdown.key, CampaignBreakdown.sent, CampaignBreakdown.delivered,
                       CampaignBreakdown.failed, CampaignBreakdown.bounced_hard, CampaignBreakdown.complaints,
                       CampaignBreakdown.unsubscribed, CampaignBreakdown.clicks).where(where(CampaignBreakdown)))),
        }


# -- lists -------------------------------------------------------------------------------------


def test_a_list_is_deleted_with_its_recipients_never_while_a_campaign_sends(app, seed, alice, as_alice, api):
    seed.server(alice)
    list_id = seed.list(alice, "Old subscribers", PEOPLE)
    other = seed.list(alice, "Kept", PEOPLE[:3])
    campaign_id = seed.campaign(alice, [list_id], name="Winter sale")
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
    # The confirmation page says what goes, and that the running campaign stops it.
    page = as_alice.get(f"/lists/{list_id}/delete")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "30 recipients will be deleted" in text and "Winter sale" in text
    refused = as_alice.post(f"/lists/{list_id}/delete", follow_redirects=True)
    assert "still sending" in refused.get_data(as_text=True)
    answer = api("DELETE", f"/lists/{list_id}")
    assert answer.status_code == 409 and "Winter sale" in answer.get_json()["error"]
    assert count(seed, Recipient, Recipient.list_id == list_id) == 30
    # Once the campaign is cancelled and none of its letters is on a server, the list goes.
    with app.app_context():
        db.session.get(Campaign, campaign_id).status = "cancelled"
        db.session.execute(Delivery.__table__.update().where(Delivery.campaign_id == campaign_id)
                           .values(status="cancelled"))
        db.session.commit()
    done = as_alice.post(f"/lists/{list_id}/delete", follow_redirects=True)
    assert "30 recipients deleted" in done.get_data(as_text=True)
    assert seed.get(MailingList, list_id) is None
    assert count(seed, Recipient, Recipient.list_id == list_id) == 0
    assert count(seed, Recipient, Recipient.list_id == other) == 3
    # The cancelled campaign keeps its letters and counts.
    assert count(seed, Delivery, Delivery.campaign_id == campaign_id) == 30
    assert ("list.deleted", f"list {list_id} (Old subscribers)", "30 recipients") in actions(seed)
    # The API: a 200 saying what went; then a 404.
    answer = api("DELETE", f"/lists/{other}")
    assert answer.status_code == 200 and answer.get_json() == {"deleted": {"list": other, "recipients": 3}}
    assert api("DELETE", f"/lists/{other}").status_code == 404


def test_an_archived_list_leaves_the_lists_page_and_the_composer_until_restored(app, seed, alice, as_alice, api):
    list_id = seed.list(alice, "Summer 2025", PEOPLE[:2])
    seed.list(alice, "Current", PEOPLE[:2])
    done = as_alice.post(f"/lists/{list_id}/archive", follow_redirects=True)
    assert done.status_code == 200 and "archived" in done.get_data(as_text=True)
    assert "Summer 2025" not in as_alice.get("/lists/").get_data(as_text=True)
    assert "Summer 2025" in as_alice.get("/lists/?archived=1").get_data(as_text=True)
    assert "Summer 2025" not in as_alice.get("/campaigns/new").get_data(as_text=True)
    assert [item["name"] for item in api("GET", "/lists").get_json()] == ["Current"]
    assert [item["name"] for item in api("GET", "/lists?archived=true").get_json()] == ["Summer 2025"]
    assert count(seed, Recipient, Recipient.list_id == list_id) == 2  # archiving deletes nothing
    assert any(a[0] == "list.archived" for a in actions(seed))
    restored = api("POST", f"/lists/{list_id}/restore")
    assert restored.status_code == 200 and restored.get_json()["archived_at"] is None
    assert "Summer 2025" in as_alice.get("/lists/").get_data(as_text=True)
    assert api("POST", f"/lists/{list_id}/archive").get_json()["archived_at"] is not None


# -- campaigns ---------------------------------------------------------------------------------


def test_a_campaign_is_not_deleted_or_archived_while_it_sends(app, seed, alice, as_alice, api):
    sent = Sent(app, seed, alice)
    sent.send_everything()  # running, letters deferred and queued on the server
    for action in ("delete", "archive"):
        answer = api("DELETE" if action == "delete" else "POST",
                     f"/campaigns/{sent.campaign_id}" + ("" if action == "delete" else "/archive"))
        assert answer.status_code == 409 and "running" in answer.get_json()["error"], answer.get_json()
        page = as_alice.post(f"/campaigns/{sent.campaign_id}/{action}", follow_redirects=True)
        assert "the campaign is running" in page.get_data(as_text=True)
    # Cancelled with letters still on the server: still refused, saying how many.
    with app.app_context():
        db.session.get(Campaign, sent.campaign_id).status = "cancelled"
        db.session.commit()
    answer = api("DELETE", f"/campaigns/{sent.campaign_id}")
    assert answer.status_code == 409 and "2 letters" in answer.get_json()["error"]
    assert count(seed, Delivery, Delivery.campaign_id == sent.campaign_id) == len(sent.ids)


def test_a_campaign_ended_within_30_days_keeps_its_letters_for_their_unsubscribe_links(app, seed, alice, as_alice, api):
    sent = Sent(app, seed, alice)
    finished(sent, days_ago=tidy.UNSUBSCRIBE_DAYS - 1)
    for method, url in (("DELETE", ""), ("POST", "/archive")):
        answer = api(method, f"/campaigns/{sent.campaign_id}{url}")
        assert answer.status_code == 409 and "unsubscribe links" in answer.get_json()["error"], answer.get_json()
    page = as_alice.post(f"/campaigns/{sent.campaign_id}/delete", follow_redirects=True).get_data(as_text=True)
    assert "must keep working for 30 days" in page
    assert count(seed, Delivery, Delivery.campaign_id == sent.campaign_id) == len(sent.ids)
    # A day later than 30: it may go.
    with app.app_context():
        db.session.get(Campaign, sent.campaign_id).finished_at = utcnow() - timedelta(days=tidy.UNSUBSCRIBE_DAYS, hours=1)
        db.session.commit()
    assert api("POST", f"/campaigns/{sent.campaign_id}/archive").status_code == 200
    assert count(seed, Delivery, Delivery.campaign_id == sent.campaign_id) == 0


def test_a_finished_campaign_is_deleted_with_its_letters_events_and_figures(app, seed, alice, as_alice, api):
    sent = Sent(app, seed, alice)
    finished(sent)
    letters = len(sent.ids)
    events = count(seed, DeliveryEvent, DeliveryEvent.delivery_id.in_(list(sent.ids.values())))
    page = as_alice.get(f"/campaigns/{sent.campaign_id}/delete").get_data(as_text=True)
    assert f"{letters} letters" in page and f"{events} delivery events" in page
    done = as_alice.post(f"/campaigns/{sent.campaign_id}/delete", follow_redirects=True)
    assert done.status_code == 200 and "deleted" in done.get_data(as_text=True)
    cid = sent.campaign_id
    assert seed.get(Campaign, cid) is None
    for model, where in ((Delivery, Delivery.campaign_id == cid), (CampaignCount, CampaignCount.campaign_id == cid),
                         (CampaignMinute, CampaignMinute.campaign_id == cid), (Click, Click.campaign_id == cid),
                         (CampaignBreakdown, CampaignBreakdown.campaign_id == cid), (Open, Open.campaign_id == cid),
                         (DeliveryEvent, DeliveryEvent.delivery_id.in_(list(sent.ids.values())))):
        assert count(seed, model, where) == 0, model
    entry = [a for a in actions(seed) if a[0] == "campaign.deleted"]
    assert entry == [("campaign.deleted", f"campaign {cid} (Spring news)",
                      f"{letters} letters, {events} events, 3 clicks, 1 opens")]
    # A draft goes through the API too, and another user's is a 404 there.
    draft = seed.campaign(alice, [seed.list(alice, "L", PEOPLE[:1])])
    assert api("DELETE", f"/campaigns/{draft}").get_json() == {
        "deleted": {"campaign": draft, "letters": 0, "events": 0, "clicks": 0, "opens": 0}}
    assert api("DELETE", f"/campaigns/{draft}").status_code == 404


def test_an_archived_campaign_keeps_its_counts_and_figures_without_its_letters(app, seed, alice, as_alice, api):
    sent = Sent(app, seed, alice)
    finished(sent)
    before = figures(app, sent.campaign_id)
    stats = api("GET", f"/campaigns/{sent.campaign_id}/stats").get_json()
    page = as_alice.get(f"/campaigns/{sent.campaign_id}/archive").get_data(as_text=True)
    assert f"{len(sent.ids)} letters" in page and "Kept in the archive" in page
    done = as_alice.post(f"/campaigns/{sent.campaign_id}/archive", follow_redirects=True)
    assert done.status_code == 200 and "archived" in done.get_data(as_text=True)
    assert count(seed, Delivery, Delivery.campaign_id == sent.campaign_id) == 0
    assert count(seed, DeliveryEvent, DeliveryEvent.delivery_id.in_(list(sent.ids.values()))) == 0
    # The counts the letters' delete trigger would have subtracted, the minutes and breakdowns: as they were.
    assert figures(app, sent.campaign_id) == before and before["counts"]
    assert api("GET", f"/campaigns/{sent.campaign_id}/stats").get_json() == stats
    campaign = seed.get(Campaign, sent.campaign_id)
    assert campaign.status == "finished" and campaign.archived_at is not None
    assert any(a[0] == "campaign.archived" for a in actions(seed))
    # Listed under "Archived", not in the default list; its page still shows the figures.
    assert "Spring news" not in as_alice.get("/campaigns/").get_data(as_text=True)
    assert "Spring news" in as_alice.get("/campaigns/?archived=1").get_data(as_text=True)
    assert [c["name"] for c in api("GET", "/campaigns?archived=true").get_json()] == ["Spring news"]
    view = as_alice.get(f"/campaigns/{sent.campaign_id}")
    assert view.status_code == 200 and "Archived" in view.get_data(as_text=True)
    # Archived twice: refused, nothing changed. Restored: back in the list, figures still the same.
    assert api("POST", f"/campaigns/{sent.campaign_id}/archive").status_code == 409
    assert api("POST", f"/campaigns/{sent.campaign_id}/restore").get_json()["archived_at"] is None
    assert figures(app, sent.campaign_id) == before


def test_a_failure_midway_leaves_everything_as_it_was(app, seed, alice, as_alice, monkeypatch):
    sent = Sent(app, seed, alice)
    finished(sent)
    before = figures(app, sent.campaign_id)

    def broken(campaign):  # the letters are gone by now, the counts not yet back
        raise RuntimeError("disk full")
    real = tidy._delete_letters
    monkeypatch.setattr(tidy, "_delete_letters", lambda campaign: (real(campaign), broken(campaign)))
    with pytest.raises(RuntimeError):
        as_alice.post(f"/campaigns/{sent.campaign_id}/archive")
    assert count(seed, Delivery, Delivery.campaign_id == sent.campaign_id) == len(sent.ids)
    assert figures(app, sent.campaign_id) == before
    assert seed.get(Campaign, sent.campaign_id).archived_at is None
    assert not [a for a in actions(seed) if a[0].startswith("campaign.archived")]


# -- suppressions ------------------------------------------------------------------------------


def test_suppression_entries_are_deleted_one_chosen_or_by_search(app, seed, alice, bob, as_alice, api):
    def suppress(user_id: int, *addresses: str) -> list[int]:
        def add(session):
            ids = [add_suppression(session.get(User, user_id), a)[0].id for a in addresses]
            session.commit()
            return ids
        return seed.query(add)
    ids = suppress(alice, "ann@one.example", "bea@one.example", "cid@one.example", "dan@two.example",
                   "eve@two.example", "fay@three.example")
    bobs = suppress(bob, "ann@one.example")
    mine = lambda: sorted(seed.query(lambda s: list(s.scalars(  # noqa: E731
        select(Suppression.email).where(Suppression.user_id == alice)))))
    # Chosen on the page: a confirmation naming them, then gone (Bob's id among them is ignored).
    confirm = as_alice.post("/suppressions/delete", {"ids": [ids[0], ids[1], bobs[0]]})
    text = confirm.get_data(as_text=True)
    assert confirm.status_code == 200 and "2 addresses" in text and "ann@one.example" in text
    assert len(mine()) == 6
    done = as_alice.post("/suppressions/delete", {"ids": [ids[0], ids[1], bobs[0]], "confirmed": "1"},
                         follow_redirects=True)
    assert "2 addresses may be mailed again" in done.get_data(as_text=True)
    assert mine() == ["cid@one.example", "dan@two.example", "eve@two.example", "fay@three.example"]
    assert count(seed, Suppression, Suppression.user_id == bob) == 1
    # By search: the page says how many match, then all of them go.
    assert "2 addresses" in as_alice.get("/suppressions/delete?q=@two.example").get_data(as_text=True)
    as_alice.post("/suppressions/delete?q=@two.example", {"confirmed": "1"})
    assert mine() == ["cid@one.example", "fay@three.example"]
    # The API: chosen addresses, or a search; an empty body is refused rather than wiping the list.
    assert api("DELETE", "/suppressions", json={}).status_code == 400
    assert api("DELETE", "/suppressions", json={"emails": ["cid@one.example", "nobody@x.example"]}).get_json() == {
        "deleted": 1}
    assert api("DELETE", "/suppressions", json={"q": "fay@"}).get_json() == {"deleted": 1}
    assert mine() == [] and count(seed, Suppression, Suppression.user_id == bob) == 1
    assert [a[1] for a in actions(seed) if a[0] == "suppression.removed"] == [
        "2 entries", "2 entries", "1 entries", "1 entries"]
