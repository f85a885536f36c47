"""Handing campaign letters to the agents, in batches persisted before they are pushed.

A letter belongs to its campaign until a server with room takes it (`_claim`): only then are its
server, source IP (by the IPs' weights) and sending domain chosen, so a faster server takes more,
a server added mid-campaign joins at once and an unreachable one takes nothing. Each server's
window is shared among the running campaigns it serves: evenly between users, by priority
between one user's campaigns.

A batch row and its deliveries' batch_id are committed first, then the batch is pushed;
only the agent's answer turns them into `queued`. A daemon stopped in between pushes the
same batch again on its next round, and the agent queues it once (idempotent batch ids).
"""

from __future__ import annotations

import logging
import threading

from flask import current_app
from itertools import islice
from typing import Iterable, Iterator

from sqlalchemy import Select, and_, or_, select, update

from ..extensions import db
from ..models import Campaign, CampaignCount, Delivery, DispatchBatch, Recipient, Server, Suppression
from ..models.base import utcnow
from ..services import quotas, test_sends, warmup
from ..services.letters import campaign_payload, recipient_payload
from ..services.tokens import delivery_token
from .agent_client import AgentClient

log = logging.getLogger(__name__)

SENDABLE = ("running",)
# SQLite has no SKIP LOCKED and takes its write lock only at the UPDATE, so two server threads of its one
# daemon (daemon/runner.py) would read the same free letters: they claim one at a time.
_SQLITE_CLAIMS = threading.Lock()
_CHUNK = 900  # ids per IN (...): under SQLite's bound-parameter limit
# Why a letter of a running campaign was not sent: its address was suppressed after the start.
SUPPRESSED_REPLY = ("not sent: the address went on your suppression list (unsubscribed, bounced or complained) "
                    "after the campaign started")


def sendable_campaigns(server: Server) -> Select:
    """Running campaigns whose letters this server may take: those that chose it, and its owner's
    campaigns that chose no server (the whole fleet, including servers added after the start)."""
    return select(Campaign).where(
        Campaign.status.in_(SENDABLE),
        or_(
            Campaign.servers.any(Server.id == server.id),
            and_(Campaign.user_id == server.user_id, ~Campaign.servers.any()),
        ),
    )


def _slots(server: Server, domains: list[str], chosen: set[int] | None = None) -> list[tuple[str, str | None]]:
    """(source IP, sending domain) pairs, each active IP repeated by its weight and paired with
    every sending domain of the campaign in turn: a batch's letters take them round in order.
    `chosen`: the ServerIP ids the campaign is limited to (None: any of the server's)."""
    used_up = warmup.used_up(server)  # warming IPs holding letters for tomorrow get no more today
    return [
        (ip.ip, domain)
        for ip in server.ips
        if ip.active and ip.ip not in used_up and (chosen is None or ip.id in chosen)
        for _ in range(max(ip.weight, 1))
        for domain in (domains or [None])
    ]


def _claim(campaign: Campaign, server: Server, size: int) -> DispatchBatch | None:
    """Take up to `size` of the campaign's letters that no server holds yet into a new batch of this
    server, choosing each one's IP and sending domain now; committed before any push. None: no
    letter left to take (or no active IP)."""
    if db.session.get_bind().dialect.name == "postgresql":
        return _take_letters(campaign, server, size)
    with _SQLITE_CLAIMS:
        return _take_letters(campaign, server, size)


def _take_letters(campaign: Campaign, server: Server, size: int) -> DispatchBatch | None:
    chosen = {ip.id for ip in campaign.source_ips} if campaign.source_ips else None
    slots = _slots(server, [domain.name for domain in campaign.domains], chosen)
    size = quotas.letters_allowed(campaign.user_id, size)  # the user's day and month (issue 10)
    if not slots or size <= 0:
        return None
    free = (
        select(Delivery.id)
        .where(Delivery.campaign_id == campaign.id, Delivery.server_id.is_(None), Delivery.status == "pending")
        .order_by(Delivery.id)
        .limit(size)
    )
    if db.session.get_bind().dialect.name == "postgresql":
        free = free.with_for_update(skip_locked=True)  # another daemon's claim takes other letters
    ids = list(db.session.scalars(free))
    if not ids:
        db.session.rollback()
        return None
    batch = DispatchBatch(campaign_id=campaign.id, server_id=server.id, size=len(ids))
    db.session.add(batch)
    db.session.flush()
    # Successive batches start at another slot, so small batches do not all favour the first IP.
    offset = batch.id % len(slots)
    by_slot: dict[int, list[int]] = {}
    for position, delivery_id in enumerate(ids):
        by_slot.setdefault((offset + position) % len(slots), []).append(delivery_id)
    taken = 0
    for index, chosen in by_slot.items():
        ip, domain = slots[index]
        for chunk in _chunks(chosen, _CHUNK):
            # Only letters still free: on SQLite the ids above were read before this transaction
            # took the write lock, and another server's thread may have taken some meanwhile.
            taken += len(db.session.execute(
                update(Delivery)
                .where(Delivery.id.in_(chunk), Delivery.server_id.is_(None), Delivery.status == "pending")
                .values(server_id=server.id, source_ip=ip, sending_domain=domain, batch_id=batch.id)
                .returning(Delivery.id)
                .execution_options(synchronize_session=False)
            ).all())
    if taken == 0:
        db.session.rollback()
        return None
    batch.size = taken
    quotas.count_letters(campaign.user_id, taken)  # in the claim's transaction: counted exactly once
    db.session.commit()
    return batch


def _chunks(items: Iterable[int], size: int) -> Iterator[list[int]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


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


def suppressed_in(batch: DispatchBatch, campaign: Campaign) -> set[int]:
    """The batch's pending letters whose address the user suppressed after the campaign started."""
    suppressed = (
        select(Suppression.id)
        .where(Suppression.user_id == campaign.user_id, Suppression.email == Delivery.email)
        .exists()
    )
    return set(db.session.scalars(
        select(Delivery.id).where(Delivery.batch_id == batch.id, Delivery.status == "pending", suppressed)
    ))


def push_batch(client: AgentClient, batch: DispatchBatch) -> None:
    """Push one batch; raises AgentError (the batch stays open and is pushed again later).

    A batch pushed again may already be on the agent (its answer was lost): a letter whose address
    was suppressed meanwhile is then left out of the push but not cancelled here, since the agent may
    hold it; it is marked queued with the rest, and recall.recall_suppressed takes it back."""
    campaign = db.session.get(Campaign, batch.campaign_id)
    first = batch.attempts == 0
    batch.attempts += 1
    held_back: set[int] = set()
    if first:
        cancel_suppressed(batch, campaign)
    else:
        held_back = suppressed_in(batch, campaign)
    payload = batch_payload(batch, campaign)
    if held_back:
        payload["recipients"] = [item for item in payload["recipients"] if item["id"] not in held_back]
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


def _open_batches(server: Server) -> list[DispatchBatch]:
    """Batches to push (again): those of running campaigns, and those of cancelled campaigns whose
    push was tried: the agent may hold them, and pushed again once it knows of the cancel, it answers
    that each letter is cancelled (or was already), so none stays pending."""
    return list(db.session.scalars(
        select(DispatchBatch)
        .join(Campaign, Campaign.id == DispatchBatch.campaign_id)
        .where(
            DispatchBatch.server_id == server.id,
            DispatchBatch.status == "open",
            or_(Campaign.status.in_(SENDABLE), and_(Campaign.status == "cancelled", DispatchBatch.attempts > 0)),
        )
        .order_by(DispatchBatch.id)
    ))


def fair_shares(campaigns: list[Campaign]) -> dict[int, float]:
    """Each campaign's share of a server's window: users share evenly, and a user's campaigns
    share that user's part by their priority."""
    by_user: dict[int, list[Campaign]] = {}
    for campaign in campaigns:
        by_user.setdefault(campaign.user_id, []).append(campaign)
    shares: dict[int, float] = {}
    for own in by_user.values():
        weight = sum(max(campaign.priority, 1) for campaign in own)
        for campaign in own:
            shares[campaign.id] = max(campaign.priority, 1) / weight / len(by_user)
    return shares


def _in_flight(server: Server) -> dict[int, int]:
    """Letters on this server's agent that its Exim has not taken yet, per campaign (the window): the
    `server:<id>:queued` counts the triggers keep exact, read by key for each campaign that can hold
    such letters (a finished or draft one holds none), rather than counting up to a window of rows."""
    return dict(db.session.execute(
        select(CampaignCount.campaign_id, CampaignCount.n)
        .join(Campaign, Campaign.id == CampaignCount.campaign_id)
        .where(Campaign.status.in_(("running", "paused", "cancelled")),
               CampaignCount.name == f"server:{server.id}:queued", CampaignCount.n > 0)
    ).all())


def dispatch_server(client: AgentClient, server: Server) -> bool:
    """Push what this server may take now, its window shared fairly among the running campaigns it
    serves; True if anything was pushed."""
    config = current_app.config
    # Test letters first: a user waits for them, and they are few (services/test_sends.py).
    pushed = test_sends.push_pending(client, server)
    # Batches left open by an earlier round or an earlier daemon go first, in order.
    for batch in _open_batches(server):
        push_batch(client, batch)
        pushed = True
    window = config["DISPATCH_WINDOW"]
    size = min(config["DISPATCH_BATCH_SIZE"], window)
    # Smaller pushes than this wait for more room: topping the window up letter by letter would
    # mean many tiny pushes.
    least = max(1, size // 10)
    campaigns = list(db.session.scalars(sendable_campaigns(server).order_by(Campaign.id)))
    if not campaigns:
        return pushed
    in_flight = _in_flight(server)
    room = window - sum(in_flight.values())
    shares = fair_shares(campaigns)
    # The campaign furthest below its share first; first up to each one's share, then whatever is
    # left to any campaign with letters still to go (a campaign short of letters leaves its share).
    campaigns.sort(key=lambda c: (in_flight.get(c.id, 0) / (shares[c.id] * window), c.id))
    drained: set[int] = set()
    for up_to_share in (True, False):
        for campaign in campaigns:
            if campaign.id in drained:
                continue
            limit = room
            if up_to_share:
                limit = min(room, round(shares[campaign.id] * window) - in_flight.get(campaign.id, 0))
            while limit >= least and room >= least:
                want = min(limit, size)
                batch = _claim(campaign, server, want)
                if batch is None:
                    drained.add(campaign.id)
                    break
                push_batch(client, batch)
                pushed = True
                room -= batch.size
                limit -= batch.size
                in_flight[campaign.id] = in_flight.get(campaign.id, 0) + batch.size
                if batch.size < want:
                    drained.add(campaign.id)
                    break
    return pushed
