"""Unsubscribing through the link (or one-click POST) in a letter."""

from __future__ import annotations

from ..extensions import db
from ..models import Campaign, Delivery, Suppression
from ..models.base import insert_unless_present, utcnow
from .tokens import delivery_id_from_token


def delivery_for_token(secret: str, token: str) -> Delivery | None:
    """The delivery a genuine token names; None for a forged token or a delivery gone since."""
    delivery_id = delivery_id_from_token(secret, token)
    return db.session.get(Delivery, delivery_id) if delivery_id is not None else None


def unsubscribe(delivery: Delivery) -> bool:
    """Put the letter's address on its sender's suppression list; False if it already was.

    Repeating it (a second click, a mail client's one-click POST after the page) changes nothing.
    """
    campaign = db.session.get(Campaign, delivery.campaign_id)
    if delivery.unsubscribed_at is None:
        delivery.unsubscribed_at = utcnow()
    # One statement, not a look and then an insert: a second click handled by another worker (or
    # a bounce the daemon applies) at the same moment waits for the first and adds nothing.
    added = db.session.execute(
        insert_unless_present(db.session, Suppression).values(
            user_id=campaign.user_id, email=delivery.email, reason="unsubscribe"
        )
    )
    db.session.flush()
    return added.rowcount == 1
