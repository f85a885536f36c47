"""The dashboard at / (issue 10 point 2): what a user running a mailing business looks at first.

Everything here is read from the rows the database keeps (campaign_counts, campaign_minutes,
campaign_breakdowns, user_letter_counts, the servers' last ping and the domains' last publish),
never by counting letters or asking DNS, so the page costs the same with 10M letters as with ten.
Tenancy: the user's own campaigns and domains; their own servers and those shared with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, or_, select

from ..extensions import db
from ..models import Campaign, CampaignBreakdown, CampaignMinute, Domain, Server, User
from ..models.base import utcnow
from . import campaign_figures, quotas, shaping
from .server_shares import shared_server_ids

# Thresholds the big mailbox providers publish: Gmail and Yahoo ask senders to stay under 0.1 %
# complaints and never reach 0.3 % (past it mail is refused); a bounce rate over 2 % marks a list
# that was not kept clean.
COMPLAINT_WARNING = 0.001
COMPLAINT_DANGER = 0.003
BOUNCE_WARNING = 0.02
BOUNCE_DANGER = 0.05
MAX_CAMPAIGNS = 20  # the page lists this many running/scheduled campaigns; the rest are on /campaigns/
RECENT_DAYS = 7  # a finished campaign's rates count as problems this long after it ended
ACTIVE = ("running", "paused")


@dataclass
class CampaignLine:
    id: int
    name: str
    status: str
    scheduled_at: str | None
    progress: dict[str, Any]

    @property
    def percent(self) -> int:
        total = self.progress["total"]
        return int(100 * self.progress["done"] / total) if total else 0


@dataclass
class ServerLine:
    id: int
    name: str
    status: str
    shared: bool
    last_seen_at: str | None
    queued: int  # the user's letters handed to it and not yet delivered or failed


@dataclass
class Problem:
    kind: str  # server_offline | dns | shaping | complaint_rate | bounce_rate
    level: str  # danger | warning
    text: str
    link: str | None = None  # a path to the page where it is fixed


@dataclass
class Dashboard:
    campaigns: list[CampaignLine]
    servers: list[ServerLine]
    rate_last_minute: int  # the user's letters delivered or failed in the last whole minute
    sent_today: int
    sent_month: int
    quota_day: int | None
    quota_month: int | None
    problems: list[Problem] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for line, item in zip(self.campaigns, data["campaigns"]):
            item["percent"] = line.percent
        return data


def _stamp(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def _campaigns(user: User, now: datetime) -> list[CampaignLine]:
    rows = db.session.scalars(select(Campaign).where(
        Campaign.user_id == user.id,
        or_(Campaign.status.in_(ACTIVE), (Campaign.status == "draft") & Campaign.scheduled_at.is_not(None)),
    ).order_by(Campaign.status.desc(), Campaign.scheduled_at, Campaign.id).limit(MAX_CAMPAIGNS))
    lines = []
    for campaign in rows:
        status = "scheduled" if campaign.status == "draft" else campaign.status
        lines.append(CampaignLine(campaign.id, campaign.name, status, _stamp(campaign.scheduled_at),
                                  campaign_figures.progress(campaign, now)))
    return lines


def _servers(user: User) -> list[Server]:
    return list(db.session.scalars(select(Server).where(
        or_(Server.user_id == user.id, Server.id.in_(shared_server_ids(user.id)))).order_by(Server.name, Server.id)))


def _queued(user: User) -> dict[str, int]:
    """Per server id (as the breakdown keys it): the user's letters there neither delivered nor failed."""
    active = select(Campaign.id).where(Campaign.user_id == user.id, Campaign.status.in_(ACTIVE))
    rows = db.session.execute(select(
        CampaignBreakdown.key,
        func.sum(CampaignBreakdown.sent - CampaignBreakdown.delivered - CampaignBreakdown.failed),
    ).where(CampaignBreakdown.dim == "server", CampaignBreakdown.campaign_id.in_(active))
        .group_by(CampaignBreakdown.key))
    return {key: int(n or 0) for key, n in rows}


def _rate_last_minute(user: User, now: datetime) -> int:
    minute = int(now.replace(tzinfo=timezone.utc).timestamp()) // 60 * 60 - 60  # the last whole minute
    mine = select(Campaign.id).where(Campaign.user_id == user.id)
    return int(db.session.scalar(select(func.coalesce(func.sum(CampaignMinute.delivered + CampaignMinute.failed), 0))
                                 .where(CampaignMinute.campaign_id.in_(mine), CampaignMinute.minute == minute)) or 0)


def _rate_problems(user: User, now: datetime) -> list[Problem]:
    """Complaint and bounce rates per provider of the running and recently ended campaigns."""
    recent = select(Campaign.id).where(Campaign.user_id == user.id, or_(
        Campaign.status.in_(ACTIVE), Campaign.finished_at >= now - timedelta(days=RECENT_DAYS)))
    rows = db.session.execute(select(
        Campaign.id, Campaign.name, CampaignBreakdown.key, CampaignBreakdown.sent, CampaignBreakdown.delivered,
        CampaignBreakdown.bounced_hard + CampaignBreakdown.bounced_soft, CampaignBreakdown.complaints,
    ).join(Campaign, Campaign.id == CampaignBreakdown.campaign_id).where(
        CampaignBreakdown.dim == "provider", CampaignBreakdown.campaign_id.in_(recent))
        .order_by(Campaign.id, CampaignBreakdown.key))
    problems = []
    for campaign_id, name, provider, sent, delivered, bounced, complaints in rows:
        link = f"/campaigns/{campaign_id}"
        if delivered and complaints / delivered > COMPLAINT_WARNING:
            rate = complaints / delivered
            level = "danger" if rate > COMPLAINT_DANGER else "warning"
            problems.append(Problem("complaint_rate", level, f"{name}: complaint rate at {provider} is "
                                    f"{100 * rate:.2f} % ({complaints:,} of {delivered:,} delivered)", link))
        if sent and bounced / sent > BOUNCE_WARNING:
            rate = bounced / sent
            level = "danger" if rate > BOUNCE_DANGER else "warning"
            problems.append(Problem("bounce_rate", level, f"{name}: bounce rate at {provider} is "
                                    f"{100 * rate:.2f} % ({bounced:,} of {sent:,} sent)", link))
    return problems


def _fleet_problems(user: User, servers: list[Server]) -> list[Problem]:
    problems = []
    for server in servers:
        own = server.user_id == user.id
        link = f"/servers/{server.id}" if own else None  # a shared server's page is its owner's
        if server.status == "offline":
            why = f": {server.last_error}" if server.last_error and own else ""
            problems.append(Problem("server_offline", "danger", f"Server {server.name} is offline{why}", link))
        for pair in shaping.current(server):
            state = pair.get("state")
            if state in ("backing_off", "suspended"):
                problems.append(Problem(
                    "shaping", "danger" if state == "suspended" else "warning",
                    f"Server {server.name}: {pair.get('provider', '?')} from {pair.get('source_ip', '?')} is "
                    f"{shaping.LABELS[state]}", link))
    return problems


def _dns_problems(user: User) -> list[Problem]:
    """The domains whose records the last publish could not set (stored; DNS is not asked here)."""
    rows = db.session.scalars(select(Domain).where(Domain.user_id == user.id, Domain.dns_state == "failed")
                              .order_by(Domain.name))
    return [Problem("dns", "danger", f"Domain {domain.name}: DNS records not published"
                    + (f": {domain.dns_error}" if domain.dns_error else ""), f"/domains/{domain.id}")
            for domain in rows]


def dashboard(user: User, now: datetime | None = None) -> Dashboard:
    now = now or utcnow()
    servers = _servers(user)
    queued = _queued(user)
    day, month = quotas.letters_sent(user.id)
    quota = quotas.quota_of(user.id)
    problems = _fleet_problems(user, servers) + _dns_problems(user) + _rate_problems(user, now)
    problems.sort(key=lambda p: p.level != "danger")  # dangers first, each kind in its order
    return Dashboard(
        campaigns=_campaigns(user, now),
        servers=[ServerLine(s.id, s.name, s.status, s.user_id != user.id, _stamp(s.last_seen_at),
                            queued.get(str(s.id), 0)) for s in servers],
        rate_last_minute=_rate_last_minute(user, now),
        sent_today=day, sent_month=month, quota_day=quota.letters_per_day, quota_month=quota.letters_per_month,
        problems=problems,
        thresholds={"complaint_warning": COMPLAINT_WARNING, "complaint_danger": COMPLAINT_DANGER,
                    "bounce_warning": BOUNCE_WARNING, "bounce_danger": BOUNCE_DANGER},
    )
