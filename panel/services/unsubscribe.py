"""Unsubscribing through the link (or one-click POST) in a letter, or by mail to its
List-Unsubscribe mailto: address (unsubscribe+<token>@<bounce domain>, piped by Exim to the agent
and collected by the daemon)."""

from __future__ import annotations

from ..extensions import db
from ..models import BounceMessage, Campaign, Delivery, Suppression
from ..models.base import insert_unless_present, utcnow
from .bounces.apply import unprocessed_messages
from .tokens import delivery_id_from_token
from .tracking_hosts import TrackingHosts


def delivery_for_token(secret: str, token: str, host: str | None, hosts: TrackingHosts) -> Delivery | None:
    """The delivery a genuine token names, asked of a host that may answer it (the panel's public
    host or the campaign's tracking domains); None for a forged token, a delivery gone since, or
    another host (one tenant's letters never answer on another tenant's domain)."""
    delivery_id = delivery_id_from_token(secret, token)
    delivery = db.session.get(Delivery, delivery_id) if delivery_id is not None else None
    if delivery is None or not hosts.allows(db.session, delivery.campaign_id, host):
        return None
    return delivery


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


def apply_unsubscribe_message(message: BounceMessage) -> bool:
    """A message mailed to a letter's unsubscribe+<token>@ address unsubscribes that letter's
    address, whatever it says (RFC 2369: the mail itself is the request). True if the address was
    added to the suppression list; a token matching no letter unsubscribes nobody, and a message
    already applied changes nothing."""
    if message.kind != "unsubscribe" or message.classified_at is not None:
        return False
    message.classified_at = utcnow()
    message.reason = "unsubscribe"
    delivery = db.session.get(Delivery, message.delivery_id) if message.delivery_id is not None else None
    if delivery is None:
        db.session.flush()
        return False
    message.recipient = delivery.email
    return unsubscribe(delivery)


def apply_pending_unsubscribe_messages(limit: int = 500) -> int:
    """Apply unsubscribe mails stored but not applied yet (e.g. kept before an upgrade)."""
    messages = unprocessed_messages("unsubscribe", limit)
    for message in messages:
        apply_unsubscribe_message(message)
    return len(messages)
