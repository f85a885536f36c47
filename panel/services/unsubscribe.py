"""Unsubscribing through the link (or one-click POST) in a letter."""

from __future__ import annotations

from sqlalchemy import select

from ..extensions import db
from ..models import Campaign, Delivery, Suppression
from ..models.base import utcnow
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
    known = db.session.scalar(
        select(Suppression).where(Suppression.user_id == campaign.user_id, Suppression.email == delivery.email)
    )
    if known is None:
        db.session.add(Suppression(user_id=campaign.user_id, email=delivery.email, reason="unsubscribe"))
    db.session.flush()
    return known is None
