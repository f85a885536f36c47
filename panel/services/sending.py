"""Starting, pausing, resuming and cancelling campaigns.

Starting resolves the recipients (allow lists − deny lists − suppressions, each address once)
in the database with set operations, so a list of millions never passes through Python; which
server and IP send each letter is chosen later, when a server takes it (daemon/dispatch.py).
"""

from __future__ import annotations

from sqlalchemy import Subquery, and_, delete, exists, func, insert, literal, or_, select, text, update

from ..extensions import db
from ..models import (
    Campaign,
    CampaignCount,
    Delivery,
    DispatchBatch,
    Recipient,
    Suppression,
    User,
)
from ..models.base import utcnow
from . import quotas
from .servers import user_servers
from .tracking import tracking_counts


class SendingError(Exception):
    """A request that cannot be carried out; the message says why and what to do."""


def _chosen_recipients(user: User, campaign: Campaign) -> Subquery:
    """(recipient_id, email) of every address to mail: on an allow list, on no deny list, not
    suppressed; the first recipient row of an address on several lists.

    The lists' ids go in as values, not as a subquery of campaign_lists: the planner then knows
    from the lists' statistics that a million rows come, and anti-joins the deny list and the
    suppressions as wholes (hashed) instead of probing both once per row, as it did for the few
    rows it guessed behind a subquery."""
    allowed = [mailing_list.id for mailing_list in campaign.lists]
    denied = [mailing_list.id for mailing_list in campaign.exclude_lists]
    chosen = (
        select(func.min(Recipient.id).label("recipient_id"), Recipient.email)
        .where(Recipient.list_id.in_(allowed))
        .where(~exists().where(and_(Suppression.user_id == user.id, Suppression.email == Recipient.email)))
        .group_by(Recipient.email)
    )
    if denied:
        deny_row = Recipient.__table__.alias("deny_row")
        chosen = chosen.where(~exists().where(and_(deny_row.c.email == Recipient.email, deny_row.c.list_id.in_(denied))))
    return chosen.subquery()


def start_campaign(user: User, campaign: Campaign) -> int:
    """Resolve recipients into letters and mark the campaign running; returns the count.

    The letters belong to the campaign: no server, IP or sending domain is fixed here. The daemon
    hands them to the campaign's servers (its chosen ones, or all of the user's, including servers
    added later) as each has room (daemon/dispatch.py)."""
    if campaign.user_id != user.id:
        raise SendingError("campaign not found")
    if campaign.status != "draft":
        raise SendingError(f"campaign is {campaign.status}; only a draft can be started")
    if refusal := quotas.start_refusal(user):
        raise SendingError(refusal)
    if not campaign.lists:
        raise SendingError("choose at least one list to send to")
    not_ready = [server for server in campaign.servers if not server.ready]
    if not_ready:
        names = ", ".join(f"{server.name} ({server.status})" for server in not_ready)
        raise SendingError(f"chosen servers cannot send yet: {names}; wait until they are set up or choose others")
    servers = campaign.servers or [server for server in user_servers(user) if server.ready]
    if not any(ip.active for server in servers for ip in server.ips):
        raise SendingError("no server with an active IP address to send from: add a server first")
    if campaign.source_ips and not any(ip.active for ip in campaign.source_ips):
        raise SendingError("none of the chosen source IPs is active: make one active on its server's page "
                           "or choose other IPs")

    chosen = _chosen_recipients(user, campaign)
    postgresql = db.session.get_bind().dialect.name == "postgresql"
    if postgresql:
        # Each new letter's foreign keys are checked by a prepared statement; with the panel's
        # plan_cache_mode=force_custom_plan (panel/__init__.py) each check would be planned again:
        # 4 checks × a million letters took most of the time. Generic plans for this INSERT only,
        # and memory enough to sort a million addresses in memory instead of on disk.
        db.session.execute(text("SET LOCAL plan_cache_mode = auto"))
        db.session.execute(text("SET LOCAL work_mem = '256MB'"))
    # In address order, the order the grouping by address already yields: each new entry of the
    # deliveries' email index lands next to the previous one. In hash order a million entries went
    # to random pages of that index, evicting and re-reading them (PostgreSQL: a third of the time).
    inserted = db.session.execute(
        insert(Delivery).from_select(
            ["campaign_id", "recipient_id", "email", "status", "updated_at"],
            select(
                literal(campaign.id), chosen.c.recipient_id, chosen.c.email, literal("pending"), literal(utcnow()),
            ).order_by(chosen.c.email),
        )
    )
    if postgresql:
        db.session.execute(text("RESET plan_cache_mode"))
        db.session.execute(text("RESET work_mem"))
    total = inserted.rowcount
    if total < 0:  # a driver that does not say
        total = db.session.scalar(select(func.count()).where(Delivery.campaign_id == campaign.id)) or 0
    if total == 0:
        db.session.execute(delete(Delivery).where(Delivery.campaign_id == campaign.id))
        raise SendingError("the chosen lists hold no recipient who may be mailed")
    campaign.total = total
    campaign.status = "running"
    campaign.started_at = utcnow()
    campaign.scheduled_at = None  # started by hand before its scheduled time: nothing left to start
    db.session.flush()
    return total


def set_campaign_state(user: User, campaign: Campaign, action: str) -> None:
    """pause | resume | cancel. The daemon tells the agents; letters not yet pushed stay here."""
    if campaign.user_id != user.id:
        raise SendingError("campaign not found")
    allowed = {"pause": ("running",), "resume": ("paused",), "cancel": ("running", "paused", "draft")}
    if action not in allowed:
        raise SendingError(f"unknown action {action!r}: use pause, resume or cancel")
    if campaign.status not in allowed[action]:
        raise SendingError(f"cannot {action} a campaign that is {campaign.status}")
    campaign.status = {"pause": "paused", "resume": "running", "cancel": "cancelled"}[action]
    if action == "cancel":
        # A letter in a batch whose push was tried may be on an agent, which may send it: it stays
        # pending until the agent, told of the cancel and pushed that batch again, answers for it.
        pushed = select(DispatchBatch.id).where(DispatchBatch.campaign_id == campaign.id, DispatchBatch.attempts > 0)
        db.session.execute(
            update(Delivery)
            .where(Delivery.campaign_id == campaign.id, Delivery.status == "pending",
                   or_(Delivery.batch_id.is_(None), Delivery.batch_id.not_in(pushed)))
            .values(status="cancelled")
            .execution_options(synchronize_session=False)
        )
        campaign.finished_at = utcnow()
    db.session.flush()


def campaign_stats(campaign: Campaign) -> dict[str, int | str]:
    """The campaign's counts, read from campaign_counts (kept by the database's triggers on every
    change of a letter: models/campaign_count.py), never counted over its letters."""
    kept = dict(
        db.session.execute(
            select(CampaignCount.name, CampaignCount.n).where(CampaignCount.campaign_id == campaign.id)
        ).all()
    )
    counts = {name[len("status:"):]: n for name, n in kept.items() if name.startswith("status:")}
    bounced = {name[len("bounce:"):]: n for name, n in kept.items() if name.startswith("bounce:")}
    unsubscribed = kept.get("unsubscribed", 0)
    delivered, deferred, failed = counts.get("delivered", 0), counts.get("deferred", 0), counts.get("failed", 0)
    return {
        "status": campaign.status,
        "total": campaign.total,
        "queued": counts.get("pending", 0) + counts.get("queued", 0),
        "sent": counts.get("sent", 0) + delivered + deferred + failed,
        "delivered": delivered,
        "deferred": deferred,
        # Letters a bounce or a refusal classified (services/bounces): a refused letter also counts as failed.
        "bounced_hard": bounced.get("hard", 0),
        "bounced_soft": bounced.get("soft", 0),
        "failed": failed,
        "cancelled": counts.get("cancelled", 0),
        "unsubscribed": unsubscribed or 0,
        # Masked links and the open pixel (services/tracking): all, and by distinct recipients.
        **tracking_counts(campaign.id),
    }


def letters_by_server(campaign: Campaign) -> dict[int | None, dict[str, int]]:
    """{server id: {state: letters}} of the campaign's letters, from the kept counts
    (`server:<id>:<state>`); None: the letters no server has taken yet (all pending)."""
    rows = db.session.execute(
        select(CampaignCount.name, CampaignCount.n).where(
            CampaignCount.campaign_id == campaign.id, CampaignCount.n != 0,
            or_(CampaignCount.name.like("server:%"), CampaignCount.name == "status:pending"))
    ).all()
    by_server: dict[int | None, dict[str, int]] = {}
    pending = 0
    for name, n in rows:
        if name == "status:pending":
            pending += n
            continue
        _, server_id, state = name.split(":", 2)
        by_server.setdefault(int(server_id), {})[state] = n
        if state == "pending":
            pending -= n
    if pending > 0:
        by_server[None] = {"pending": pending}
    return by_server


def server_letters(server_id: int, states: tuple[str, ...] = ("running", "paused")) -> dict[str, int]:
    """{state: letters} this server holds of the campaigns in `states`, from the kept counts."""
    prefix = f"server:{server_id}:"
    rows = db.session.execute(
        select(CampaignCount.name, func.sum(CampaignCount.n))
        .join(Campaign, Campaign.id == CampaignCount.campaign_id)
        .where(Campaign.status.in_(states), CampaignCount.name >= prefix, CampaignCount.name < prefix[:-1] + ";")
        .group_by(CampaignCount.name)
    ).all()
    return {name[len(prefix):]: int(n) for name, n in rows if n}
