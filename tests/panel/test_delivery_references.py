"""A letter's recipient_id and server_id have no foreign key (models/campaign.py): the services
that delete a recipient or a server clear them, as ON DELETE SET NULL did, so a letter never
points at a row that is gone or at a later row that took its id."""

from __future__ import annotations

from sqlalchemy import select

from panel.extensions import db
from panel.models import Campaign, Delivery, MailingList, Recipient, User
from panel.services.csv_import import import_records
from panel.services.recipients import delete_recipient
from panel.services.sending import start_campaign


def _started(app, seed, user_id: int, emails: list[str]) -> tuple[int, int]:
    """A started campaign to a new list of `emails`; (list id, campaign id)."""
    seed.server(user_id)
    list_id = seed.list(user_id, "readers", [{"email": email, "name": email[:3]} for email in emails])
    campaign_id = seed.campaign(user_id, [list_id])
    with app.app_context():
        assert start_campaign(db.session.get(User, user_id), db.session.get(Campaign, campaign_id)) == len(emails)
        db.session.commit()
    return list_id, campaign_id


def _letters(seed, campaign_id: int) -> dict[str, int | None]:
    return seed.query(lambda s: dict(s.execute(
        select(Delivery.email, Delivery.recipient_id).where(Delivery.campaign_id == campaign_id)).all()))


def test_a_deleted_recipients_letter_keeps_its_address_and_loses_the_recipient(app, seed, alice):
    list_id, campaign_id = _started(app, seed, alice, ["ann@example.org", "bob@example.org"])
    with app.app_context():
        mailing_list = db.session.get(MailingList, list_id)
        bob = db.session.scalar(select(Recipient).where(Recipient.email == "bob@example.org"))
        bob_id = bob.id
        delete_recipient(mailing_list, bob)
        db.session.commit()
        # The next recipient may take bob's id (SQLite reuses the highest rowid): it gets no letter of his.
        import_records(db.session.get(MailingList, list_id), [{"email": "cat@example.org", "name": "Cat"}])
        db.session.commit()

    letters = _letters(seed, campaign_id)
    assert letters["bob@example.org"] is None
    assert letters["ann@example.org"] not in (None, bob_id)
    assert set(letters) == {"ann@example.org", "bob@example.org"}


def test_letters_name_the_recipient_they_were_resolved_from_and_no_server_yet(app, seed, alice):
    _list_id, campaign_id = _started(app, seed, alice, ["ann@example.org", "bob@example.org"])
    rows = seed.query(lambda s: s.execute(
        select(Delivery.email, Recipient.email, Delivery.server_id)
        .join(Recipient, Recipient.id == Delivery.recipient_id)
        .where(Delivery.campaign_id == campaign_id)).all())
    assert sorted((letter, recipient) for letter, recipient, _server in rows) == [
        ("ann@example.org", "ann@example.org"), ("bob@example.org", "bob@example.org")]
    # A letter belongs to its campaign until a server with room takes it (issue 9, point 1).
    assert all(server is None for _letter, _recipient, server in rows)
