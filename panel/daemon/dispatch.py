"""Pushing campaign letters to the agents, in batches persisted before they are pushed.

A batch row and its deliveries' batch_id are committed first, then the batch is pushed;
only the agent's answer turns them into `queued`. A daemon stopped in between pushes the
same batch again on its next round, and the agent queues it once (idempotent batch ids).
"""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import func, select, update

from ..extensions import db
from ..models import Campaign, Delivery, DispatchBatch, Recipient, Server, Suppression
from ..models.base import utcnow
from ..services.letters import campaign_payload, recipient_payload
from ..services.tokens import delivery_token
from .agent_client import AgentClient

log = logging.getLogger(__name__)

SENDABLE = ("running",)
# Why a letter of a running campaign was not sent: its address was suppressed after the start.
SUPPRESSED_REPLY = ("not sent: the address went on your suppression list (unsubscribed, bounced or complained) "
                    "after the campaign started")


def _in_flight(server: Server) -> int:
    """Letters pushed to this server that its Exim has not taken yet (the flow-control window)."""
    return db.session.scalar(
        select(func.count()).where(Delivery.server_id == server.id, Delivery.status == "queued")
    ) or 0


def _open_batch(campaign: Campaign, server: Server, size: int) -> DispatchBatch | None:
    ids = list(
        db.session.scalars(
            select(Delivery.id)
            .where(
                Delivery.campaign_id == campaign.id,
                Delivery.server_id == server.id,
                Delivery.status == "pending",
                Delivery.batch_id.is_(None),
            )
            .order_by(Delivery.id)
            .limit(size)
        )
    )
    if not ids:
        return None
    batch = DispatchBatch(campaign_id=campaign.id, server_id=server.id, size=len(ids))
    db.session.add(batch)
    db.session.flush()
    db.session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(batch_id=batch.id))
    db.session.commit()
    return batch


def batch_payload(batch: DispatchBatch, campaign: Campaign) -> dict:
    config = current_app.config
    secret = config["SECRET_KEY"]
    rows = db.session.execute(
        select(Delivery, Recipient.fields)
        .outerjoin(Recipient, Recipient.id == Delivery.recipient_id)
        .where(Delivery.batch_id == batch.id, Delivery.status == "pending")
        .order_by(Delivery.id)
    ).all()
    recipients = [
        recipient_payload(delivery, delivery_token(secret, delivery.id), delivery.source_ip, fields or {})
        for delivery, fields in rows
    ]
    return {
        "batch_id": batch.agent_batch_id,
        "campaign": campaign_payload(campaign, config["PUBLIC_URL"], config["BOUNCE_DOMAIN"], secret,
                                     config["TRACKING_SCHEME"]),
        "recipients": recipients,
    }


def cancel_suppressed(batch: DispatchBatch, campaign: Campaign) -> int:
    """Cancel the batch's letters whose address the user suppressed after the campaign started (an
    unsubscribe from an earlier letter, a hard bounce, a complaint): such a letter is never pushed.
    Returns how many were cancelled."""
    suppressed = (
        select(Suppression.id)
        .where(Suppression.user_id == campaign.user_id, Suppression.email == Delivery.email)
        .exists()
    )
    result = db.session.execute(
        update(Delivery)
        .where(Delivery.batch_id == batch.id, Delivery.status == "pending", suppressed)
        .values(status="cancelled", reply=SUPPRESSED_REPLY)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def push_batch(client: AgentClient, batch: DispatchBatch) -> None:
    """Push one batch; raises AgentError (the batch stays open and is pushed again later)."""
    campaign = db.session.get(Campaign, batch.campaign_id)
    batch.attempts += 1
    cancel_suppressed(batch, campaign)
    payload = batch_payload(batch, campaign)
    db.session.commit()  # the attempt is counted even if the push dies with the process
    if payload["recipients"]:
        client.call("/v1/batches", payload)
    batch.status = "pushed"
    batch.pushed_at = utcnow()
    batch.last_error = None
    db.session.execute(
        update(Delivery).where(Delivery.batch_id == batch.id, Delivery.status == "pending").values(status="queued")
    )
    db.session.commit()


def dispatch_server(client: AgentClient, server: Server) -> bool:
    """Push what this server may take now; True if anything was pushed."""
    config = current_app.config
    pushed = False
    # Batches left open by an earlier round or an earlier daemon go first, in order.
    for batch in db.session.scalars(
        select(DispatchBatch)
        .join(Campaign, Campaign.id == DispatchBatch.campaign_id)
        .where(DispatchBatch.server_id == server.id, DispatchBatch.status == "open", Campaign.status.in_(SENDABLE))
        .order_by(DispatchBatch.id)
    ).all():
        push_batch(client, batch)
        pushed = True
    size = min(config["DISPATCH_BATCH_SIZE"], config["DISPATCH_WINDOW"])
    room = config["DISPATCH_WINDOW"] - _in_flight(server)
    campaigns = db.session.scalars(
        select(Campaign)
        .where(Campaign.status.in_(SENDABLE), Campaign.servers.any(Server.id == server.id))
        .order_by(Campaign.id)
    ).all()
    for campaign in campaigns:
        # Only whole batches: topping the window up letter by letter would mean many tiny pushes.
        while room >= size:
            batch = _open_batch(campaign, server, size)
            if batch is None:
                break
            push_batch(client, batch)
            room -= batch.size
            pushed = True
    return pushed
