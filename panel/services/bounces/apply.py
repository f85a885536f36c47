"""Applying what bounces say: to the letter, to its campaign's figures, to the suppression list.

A returned message reaches the panel with the VERP token of the letter it answers, so the
letter (and its address) is known before the message is read. The classifier's verdict is
therefore applied to the letter's own address — never to an address the message names:

- the letter's `bounce` becomes hard or soft (hard wins over soft, never the reverse), which
  `campaign_stats` counts as bounced_hard / bounced_soft;
- a hard bounce puts the address on its sender's suppression list at once (hard_bounce), and
  so does an ARF complaint (complaint), although a complaint is kind "none" for the classifier:
  it is no delivery failure, but the recipient asked not to be mailed;
- a soft bounce suppresses (soft_bounce) once the address has soft-bounced on
  BOUNCE_SOFT_LIMIT letters in a row across the user's campaigns, with no letter delivered
  to it without a bounce in between;
- a delay notice (DSN Action: delayed) is recorded on the message but changes nothing: the
  letter is still being tried;
- a message naming another address than the letter's is applied all the same (a forwarded
  address reports its final recipient) and marked `mismatch`; one whose token matches no
  letter is recorded and suppresses nobody.

A refusal at delivery time (a `failed` outcome with its SMTP code and text) is judged the same
way. Everything here is idempotent: the same bounce applied twice leaves the same state, the
suppression list holds an address once, a letter counts once.
"""

from __future__ import annotations

import logging
import re

from flask import current_app
from sqlalchemy import and_, or_, select

from ...extensions import db
from ...models import BounceMessage, Campaign, Delivery, Suppression
from ...models.base import insert_unless_present, utcnow
from ..campaign_figures import count_complaint
from .classify import Verdict, classify, classify_reply, suppression_for
from .message import NotAMessage, read_message

log = logging.getLogger(__name__)
DEFAULT_SOFT_LIMIT = 3
# The worker's own Exim refusing a letter handed to it (a source IP it does not own, …): a
# fault of this system's set-up, which says nothing about the recipient.
_OWN_REFUSAL = re.compile(r"X-Mailfleet-", re.I)


def soft_limit() -> int:
    return max(1, int(current_app.config.get("BOUNCE_SOFT_LIMIT", DEFAULT_SOFT_LIMIT)))


def _verdict_for(verdicts: list[Verdict], address: str) -> tuple[Verdict, bool]:
    """The verdict about this address, else the first failure, else the first; and whether it
    names another address than this one."""
    address = address.lower()
    for verdict in verdicts:
        if address in {(verdict.recipient or "").lower(), (verdict.original_recipient or "").lower()}:
            return verdict, False
    failures = [v for v in verdicts if v.kind != "none"] or verdicts
    named = failures[0].recipient or failures[0].original_recipient
    return failures[0], bool(named)


def suppress(user_id: int, email: str, reason: str) -> bool:
    """Put an address on the user's suppression list; False if it already was (on any reason).

    One statement: an unsubscribe of the same address at the same moment waits and adds nothing.
    """
    added = db.session.execute(
        insert_unless_present(db.session, Suppression).values(user_id=user_id, email=email, reason=reason)
    )
    db.session.flush()
    return added.rowcount == 1


def _soft_streak(user_id: int, email: str, limit: int) -> int:
    """How many of the address's latest letters from this user soft-bounced in a row (at most limit).

    Letters still on their way (no outcome, no bounce) neither count nor break the streak; a
    letter delivered without a bounce, or hard-bounced, breaks it.
    """
    rows = db.session.execute(
        select(Delivery.bounce)
        .join(Campaign, Campaign.id == Delivery.campaign_id)
        .where(Campaign.user_id == user_id, Delivery.email == email)
        .where(or_(Delivery.bounce.is_not(None), and_(Delivery.status == "delivered", Delivery.bounce.is_(None))))
        .order_by(Delivery.id.desc())
        .limit(limit)
    ).scalars().all()
    streak = 0
    for bounce in rows:
        if bounce != "soft":
            break
        streak += 1
    return streak


def apply_verdict(delivery: Delivery, verdict: Verdict) -> str | None:
    """Record a verdict on its letter and suppress as the rules say; returns the suppression
    reason if the address was newly suppressed."""
    if verdict.action == "delayed":
        return None  # a delay notice: the letter is still being tried, its fate is yet to come
    campaign = db.session.get(Campaign, delivery.campaign_id)
    if verdict.kind in ("hard", "soft") and delivery.bounce != "hard":
        delivery.bounce, delivery.bounce_reason = verdict.kind, verdict.reason
        db.session.flush()
    if verdict.complaint:
        count_complaint(delivery)  # the campaign page's breakdowns (a report, counted as it comes)
    reason = suppression_for(verdict)
    if reason is None and delivery.bounce == "soft" and verdict.kind == "soft":
        limit = soft_limit()
        if _soft_streak(campaign.user_id, delivery.email, limit) >= limit:
            reason = "soft_bounce"
    if reason and suppress(campaign.user_id, delivery.email, reason):
        log.info("suppressed %s for user %s: %s (%s)", delivery.email, campaign.user_id, reason, verdict.reason)
        return reason
    return None


def process_bounce(message: BounceMessage, raw: str | None = None) -> None:
    """Classify a stored bounce message and apply it to its letter; does nothing the second time.
    `raw` is the message as it came, when what is kept of it was cut."""
    if message.kind != "bounce" or message.classified_at is not None:
        return
    try:
        verdicts = classify(read_message((message.raw if raw is None else raw).encode("utf-8", "surrogateescape")))
    except NotAMessage:
        verdicts = [Verdict(recipient=None, reason="nofailure", kind="none")]
    delivery = db.session.get(Delivery, message.delivery_id) if message.delivery_id else None
    if delivery is not None:
        verdict, message.mismatch = _verdict_for(verdicts, delivery.email)
    else:
        verdict = next((v for v in verdicts if v.kind != "none"), verdicts[0])
    message.recipient = (verdict.recipient or verdict.original_recipient or "")[:320] or None
    message.reason, message.bounce_kind = verdict.reason, verdict.kind
    message.dsn, message.code = (verdict.dsn or None), verdict.code
    message.classified_at = utcnow()
    if message.mismatch:
        log.warning("bounce %s names %s but answers the letter to %s: applied to the letter's address",
                    message.id, message.recipient, delivery.email)
    if delivery is not None:
        apply_verdict(delivery, verdict)
    db.session.flush()


def unprocessed_messages(kind: str, limit: int) -> list[BounceMessage]:
    """Stored messages of a kind ("bounce", "unsubscribe") not acted on yet, oldest first."""
    return list(db.session.scalars(
        select(BounceMessage)
        .where(BounceMessage.kind == kind, BounceMessage.classified_at.is_(None))
        .order_by(BounceMessage.id)
        .limit(limit)
    ))


def process_pending_bounces(limit: int = 500) -> int:
    """Classify stored bounce messages not classified yet (e.g. stored before an upgrade)."""
    messages = unprocessed_messages("bounce", limit)
    for message in messages:
        process_bounce(message)
    return len(messages)


def process_refusal(delivery: Delivery, code: int | None, text: str | None) -> Verdict | None:
    """A `failed` outcome at delivery time: the receiving server's code and text, judged like a
    bounce. None (and nothing recorded) for a refusal by the worker's own Exim."""
    if _OWN_REFUSAL.search(text or ""):
        return None
    verdict = classify_reply(code, text, recipient=delivery.email)
    apply_verdict(delivery, verdict)
    return verdict
