"""Collecting what happened to each letter from the agents, and applying it once.

The agent keeps events until the panel acks their seq; the panel stores events and the
new ack in one transaction. A daemon stopped before commit asks again from the old ack,
and applying an event twice leaves the same state (transitions only move forward).
"""

from __future__ import annotations

import logging
from itertools import islice
from typing import Iterable, Iterator

from flask import current_app
from sqlalchemy import bindparam, insert, select, update

from ..extensions import db
from ..models import BounceMessage, Campaign, Delivery, DeliveryEvent, Server
from ..models.base import is_row_id, utcnow
from ..services.bounces.apply import process_bounce, process_pending_bounces, process_refusal
from ..services.tokens import delivery_id_from_token
from ..services.unsubscribe import apply_pending_unsubscribe_messages, apply_unsubscribe_message
from .agent_client import AgentClient

log = logging.getLogger(__name__)

# Which current states each reported status may replace.
_REPLACES: dict[str, frozenset[str]] = {
    "sent": frozenset({"pending", "queued"}),
    "deferred": frozenset({"pending", "queued", "sent", "deferred"}),
    "delivered": frozenset({"pending", "queued", "sent", "deferred"}),
    "failed": frozenset({"pending", "queued", "sent", "deferred"}),
    "cancelled": frozenset({"pending", "queued"}),
}
_CHUNK = 900  # ids per IN (...): under SQLite's bound-parameter limit


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _current_states(server: Server, ids: list[int]) -> dict[int, str]:
    states: dict[int, str] = {}
    for chunk in _chunks(ids, _CHUNK):
        states.update(
            db.session.execute(
                select(Delivery.id, Delivery.status).where(Delivery.id.in_(chunk), Delivery.server_id == server.id)
            ).all()
        )
    return states


def apply_events(server: Server, events: list[dict]) -> int:
    """Store events and move deliveries forward; returns how many deliveries changed."""
    states = _current_states(server, [e["id"] for e in events if is_row_id(e.get("id"))])
    now = utcnow()
    history, changes, refusals = [], {}, []
    for event in events:
        delivery_id, status = event.get("id"), event.get("status")
        if delivery_id not in states or status not in _REPLACES:
            continue  # not this server's letter, or a status this panel does not know: ignore
        code, text = event.get("code"), event.get("text")
        history.append({"delivery_id": delivery_id, "status": status, "code": code, "text": text, "created_at": now})
        if status == "failed" and (code or text):
            refusals.append((delivery_id, code, text))
        if states[delivery_id] in _REPLACES[status]:
            states[delivery_id] = status
            changes[delivery_id] = {"b_id": delivery_id, "b_status": status, "b_code": code, "b_reply": text}
    if history:
        db.session.execute(insert(DeliveryEvent), history)
    if changes:
        table = Delivery.__table__
        db.session.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values(status=bindparam("b_status"), code=bindparam("b_code"), reply=bindparam("b_reply"), updated_at=now),
            list(changes.values()),
        )
    for delivery_id, code, text in refusals:  # what the refusing server said, judged like a bounce
        process_refusal(db.session.get(Delivery, delivery_id), code, text)
    return len(changes)


def store_bounces(server: Server, bounces: list[dict]) -> None:
    """Keep each returned message and, for bounces, classify and apply it in the same transaction."""
    secret = current_app.config["SECRET_KEY"]
    for bounce in bounces:
        token = bounce.get("token") or None
        delivery_id = delivery_id_from_token(secret, token) if token else None
        if delivery_id is not None and db.session.get(Delivery, delivery_id) is None:
            delivery_id = None  # a genuine token of a letter deleted since
        message = BounceMessage(
            server_id=server.id,
            delivery_id=delivery_id,
            kind=bounce.get("kind") or "bounce",
            token=token[:100] if token else None,
            raw=str(bounce.get("raw", "")),
            received_at=utcnow(),
        )
        db.session.add(message)
        db.session.flush()
        process_bounce(message)
        apply_unsubscribe_message(message)


def collect_outcomes(client: AgentClient, server: Server) -> bool:
    """Fetch and apply events until the agent has no more; True if anything arrived."""
    arrived = False
    while True:
        reply = client.call("/v1/outcomes", {"ack": server.outcome_ack})
        events, bounces = reply.get("events") or [], reply.get("bounces") or []
        seqs = [item["seq"] for item in events + bounces if isinstance(item.get("seq"), int)]
        if not seqs:
            return arrived
        apply_events(server, events)
        store_bounces(server, bounces)
        server.outcome_ack = max(server.outcome_ack, max(seqs))
        db.session.commit()
        arrived = True
        if not reply.get("more"):
            return arrived


def finish_campaigns() -> None:
    """A running campaign whose every letter has left the pipeline is finished.

    (First, bounce and unsubscribe messages stored but not yet applied — kept before an upgrade — are.)
    """
    if process_pending_bounces() + apply_pending_unsubscribe_messages():
        db.session.commit()
    waiting = ("pending", "queued", "sent")
    for campaign in db.session.scalars(select(Campaign).where(Campaign.status == "running")).all():
        busy = db.session.scalar(
            select(Delivery.id).where(Delivery.campaign_id == campaign.id, Delivery.status.in_(waiting)).limit(1)
        )
        if busy is None:
            campaign.status = "finished"
            campaign.finished_at = utcnow()
    db.session.commit()

