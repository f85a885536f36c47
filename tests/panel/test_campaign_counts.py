"""A campaign's kept counts (campaign_counts, kept by triggers on deliveries) stay equal to what
counting its letters gives, whichever way the letters change: started, pushed, outcomes from the
agent, bounces, refusals, unsubscribes, cancel, a deleted server, deleted letters, a deleted
campaign; and lists' kept recipient counts after imports, deletes and unsubscribes."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select, update

from panel.daemon.outcomes import apply_events
from panel.extensions import db
from panel.models import Campaign, CampaignCount, Delivery, MailingList, Recipient, Server, User
from panel.services.recipients import delete_recipient, find_in_list, unsubscribe_recipient
from panel.services.sending import campaign_stats, set_campaign_state, start_campaign
from panel.services.unsubscribe import unsubscribe

PEOPLE = [{"email": f"p{n}@example.org", "name": f"P{n}"} for n in range(40)]


@pytest.fixture
def api_token_client(client, seed, alice):
    return client, {"Authorization": f"Bearer {seed.token(alice)}"}


def counted(campaign_id: int) -> dict[str, int]:
    """The counts as counting the letters gives them (what campaign_stats did before it kept them)."""
    where = Delivery.campaign_id == campaign_id
    found = {f"status:{s}": n for s, n in db.session.execute(
        select(Delivery.status, func.count()).where(where).group_by(Delivery.status))}
    found.update({f"bounce:{b}": n for b, n in db.session.execute(
        select(Delivery.bounce, func.count()).where(where, Delivery.bounce.is_not(None)).group_by(Delivery.bounce))})
    found["unsubscribed"] = db.session.scalar(select(func.count()).where(where, Delivery.unsubscribed_at.is_not(None)))
    found.update({f"server:{server}:{s}": n for server, s, n in db.session.execute(
        select(Delivery.server_id, Delivery.status, func.count()).where(where, Delivery.server_id.is_not(None))
        .group_by(Delivery.server_id, Delivery.status))})
    return {name: n for name, n in found.items() if n}


def kept(campaign_id: int) -> dict[str, int]:
    return {name: n for name, n in db.session.execute(
        select(CampaignCount.name, CampaignCount.n).where(CampaignCount.campaign_id == campaign_id)) if n}


def check(campaign_id: int) -> dict[str, int]:
    db.session.flush()
    assert kept(campaign_id) == counted(campaign_id)
    return kept(campaign_id)


def test_counts_follow_every_change(app, seed, alice, bob):
    list_id = seed.list(alice, "People", PEOPLE)
    server_id = seed.server(alice, ips=("192.0.2.10", "192.0.2.11"))
    first = seed.campaign(alice, [list_id])
    second = seed.campaign(alice, [list_id])
    with app.app_context():
        user = db.session.get(User, alice)
        start_campaign(user, db.session.get(Campaign, first))
        start_campaign(user, db.session.get(Campaign, second))
        db.session.commit()
        assert check(first) == {"status:pending": 40}
        ids = list(db.session.scalars(select(Delivery.id).where(Delivery.campaign_id == first).order_by(Delivery.id)))
        # Pushed (the daemon's bulk UPDATE), then the agent's outcomes (an executemany UPDATE).
        db.session.execute(update(Delivery).where(Delivery.id.in_(ids[:30])).values(status="queued", server_id=server_id))
        check(first)
        server = db.session.get(Server, server_id)
        events = [{"id": i, "status": "delivered"} for i in ids[:10]]
        events += [{"id": i, "status": "deferred", "code": 451, "text": "451 4.7.1 try later"} for i in ids[10:15]]
        events += [{"id": i, "status": "failed", "code": 550,
                    "text": "550 5.1.1 user unknown: no such user here"} for i in ids[15:20]]
        events += [{"id": i, "status": "sent"} for i in ids[20:25]]
        apply_events(server, events)
        apply_events(server, events)  # applied twice: nothing moves
        db.session.commit()
        stats = check(first)
        assert stats["status:delivered"] == 10 and stats["status:failed"] == 5
        # Unsubscribes through the letter's link (twice), a letter's bounce set by the ORM.
        letter = db.session.get(Delivery, ids[0])
        unsubscribe(letter)
        unsubscribe(letter)
        db.session.get(Delivery, ids[1]).bounce = "soft"
        db.session.commit()
        check(first)
        db.session.get(Delivery, ids[1]).bounce = None
        db.session.get(Delivery, ids[2]).unsubscribed_at = None  # never set: no change
        db.session.commit()
        check(first)
        # Cancel (pending and queued letters), a deleted letter, the other campaign untouched.
        set_campaign_state(user, db.session.get(Campaign, first), "cancel")
        db.session.execute(delete(Delivery).where(Delivery.id == ids[-1]))
        db.session.commit()
        stats = check(first)
        assert check(second) == {"status:pending": 40}
        assert campaign_stats(db.session.get(Campaign, first))["cancelled"] == stats.get("status:cancelled", 0)
        # The server deleted: its letters without an outcome fail; a deleted campaign takes its counts along.
        db.session.execute(update(Delivery).where(Delivery.campaign_id == second, Delivery.id % 2 == 0)
                           .values(status="failed"))
        check(second)
        db.session.delete(db.session.get(Campaign, second))
        db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(CampaignCount)
                                 .where(CampaignCount.campaign_id == second)) == 0
        check(first)


def test_campaign_stats_read_the_kept_counts(app, seed, alice):
    list_id = seed.list(alice, "People", PEOPLE[:3])
    seed.server(alice)
    campaign_id = seed.campaign(alice, [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
        db.session.execute(update(CampaignCount).where(CampaignCount.campaign_id == campaign_id)
                           .values(n=CampaignCount.n + 1000))
        assert campaign_stats(db.session.get(Campaign, campaign_id))["queued"] == 1003  # no COUNT(*) behind it


def test_list_counts_stay_right(app, seed, alice, api_token_client):
    client, headers = api_token_client
    list_id = seed.list(alice, "People", PEOPLE[:10])
    body = "email\n" + "".join(f"p{n}@example.org\n" for n in range(5, 25))
    client.post(f"/api/v1/lists/{list_id}/recipients", data=body, content_type="text/csv", headers=headers)
    client.delete(f"/api/v1/lists/{list_id}/recipients/p3@example.org", headers=headers)
    client.post(f"/api/v1/lists/{list_id}/recipients/p4@example.org/unsubscribe", headers=headers)
    with app.app_context():
        mailing_list = db.session.get(MailingList, list_id)
        delete_recipient(mailing_list, find_in_list(mailing_list, "p5@example.org"))
        unsubscribe_recipient(mailing_list, find_in_list(mailing_list, "p6@example.org"))
        db.session.commit()
        real = db.session.scalar(select(func.count()).select_from(Recipient).where(Recipient.list_id == list_id))
        assert db.session.get(MailingList, list_id).recipient_count == real == 23


def test_counts_per_server_follow_hand_overs_and_failover(app, seed, alice):
    """Letters taken by a server, its outcomes, given back by failover and taken by another: each
    server's count by state stays what counting its letters gives."""
    from panel.daemon.dispatch import _claim
    from panel.services.failover import release_batches

    list_id = seed.list(alice, "People", PEOPLE)
    first_server = seed.server(alice, name="first")
    second_server = seed.server(alice, name="second", ips=("192.0.2.20",))
    campaign_id = seed.campaign(alice, [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
        taken = _claim(db.session.get(Campaign, campaign_id), db.session.get(Server, first_server), 30).id
        assert check(campaign_id)["server:%d:pending" % first_server] == 30
        db.session.execute(update(Delivery).where(Delivery.batch_id == taken, Delivery.id % 3 == 0)
                           .values(status="queued"))
        db.session.commit()
        check(campaign_id)
        db.session.execute(update(Delivery).where(Delivery.batch_id == taken, Delivery.status == "queued")
                           .values(status="pending"))
        assert release_batches([taken]) == 30
        db.session.commit()
        assert not any(name.startswith("server:") for name in check(campaign_id))
        _claim(db.session.get(Campaign, campaign_id), db.session.get(Server, second_server), 40)
        # One statement moving letters to another server and another state at once.
        db.session.execute(update(Delivery).where(Delivery.campaign_id == campaign_id, Delivery.id % 2 == 0)
                           .values(server_id=first_server, status="delivered"))
        db.session.commit()
        counts = check(campaign_id)
        assert counts["server:%d:delivered" % first_server] == 20
        assert counts["server:%d:pending" % second_server] == 20


def test_letters_by_server_and_a_servers_letters_read_the_kept_counts(app, seed, alice):
    from panel.daemon.dispatch import _claim
    from panel.services.sending import letters_by_server, server_letters

    list_id = seed.list(alice, "People", PEOPLE)
    server_id = seed.server(alice)
    campaign_id = seed.campaign(alice, [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
        batch = _claim(db.session.get(Campaign, campaign_id), db.session.get(Server, server_id), 25).id
        db.session.execute(update(Delivery).where(Delivery.batch_id == batch, Delivery.id % 5 == 0)
                           .values(status="queued"))
        db.session.commit()
        queued = db.session.scalar(select(func.count()).where(Delivery.batch_id == batch, Delivery.status == "queued"))
        campaign = db.session.get(Campaign, campaign_id)
        assert letters_by_server(campaign) == {server_id: {"pending": 25 - queued, "queued": queued},
                                               None: {"pending": 15}}
        assert server_letters(server_id) == {"pending": 25 - queued, "queued": queued}
        campaign.status = "finished"
        db.session.commit()
        assert server_letters(server_id) == {}
