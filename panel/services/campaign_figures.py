"""The campaign page's live figures, read from the rows the database keeps (models/campaign_figures.py):
letters a minute by Exim's time, progress and an estimated finish, and breakdowns by provider,
recipient domain, server, source IP and bounce reason. Nothing here counts letters.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from ..extensions import db
from ..models import Campaign, CampaignBreakdown, CampaignCount, CampaignMinute, Delivery, Server
from ..models.base import utcnow
from ..models.campaign_figures import DIMENSIONS, PROVIDER_OF

TIMELINE_COLUMNS = ("sent", "delivered", "deferred", "failed", "clicks", "opens")
BREAKDOWN_COLUMNS = ("sent", "delivered", "deferred", "failed", "bounced_hard", "bounced_soft", "complaints",
                     "unsubscribed", "clicks")
# (name, numerator columns, denominator): the rates each breakdown row carries.
RATES = (
    ("delivery_rate", ("delivered",), "sent"),
    ("deferral_rate", ("deferred",), "sent"),
    ("bounce_rate", ("bounced_hard", "bounced_soft"), "sent"),
    ("complaint_rate", ("complaints",), "delivered"),
    ("unsubscribe_rate", ("unsubscribed",), "delivered"),
    ("click_rate", ("clicks",), "delivered"),
)
TOP_DOMAINS = 20
RATE_WINDOW = 5  # minutes of outcomes the current rate is taken over
ROW_LABELS = {"provider": "Provider", "domain": "Domain", "server": "Server", "ip": "Source IP", "reason": "Reason"}


class FiguresError(ValueError):
    """A request for figures that cannot be answered; the message says what to send instead."""


def minute_text(minute: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(minute))


def parse_since(value: str | None) -> int | None:
    """`since` as the API takes it: an ISO time (UTC if no zone) -> unix seconds of its minute."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FiguresError(f"since={value!r} is no time: send an ISO 8601 time such as 2026-12-04T15:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp()) // 60 * 60


def timeline(campaign: Campaign, since: int | None = None) -> list[dict[str, Any]]:
    """Each minute with an outcome, click or open, oldest first (from `since`, unix seconds, on)."""
    # Plain rows, not ORM objects: a campaign of a week has 10,000 minutes.
    query = select(CampaignMinute.minute, *[getattr(CampaignMinute, c) for c in TIMELINE_COLUMNS]).where(
        CampaignMinute.campaign_id == campaign.id)
    if since is not None:
        query = query.where(CampaignMinute.minute >= since)
    names = ("minute",) + TIMELINE_COLUMNS
    return [dict(zip(names, (minute_text(row[0]), *row[1:])))
            for row in db.session.execute(query.order_by(CampaignMinute.minute))]


def progress(campaign: Campaign, now: datetime | None = None) -> dict[str, Any]:
    """Letters done (delivered, failed, not sent) of the total, the rate of the last RATE_WINDOW
    minutes (by Exim's time) and, while the campaign runs at some rate, when it should finish."""
    now = now or utcnow()
    kept = dict(db.session.execute(
        select(CampaignCount.name, CampaignCount.n).where(
            CampaignCount.campaign_id == campaign.id,
            CampaignCount.name.in_(("status:delivered", "status:failed", "status:cancelled")))).all())
    done = sum(kept.values())
    remaining = max(0, campaign.total - done)
    stamp = int(now.replace(tzinfo=timezone.utc).timestamp()) // 60 * 60
    recent = db.session.scalar(  # a Decimal on PostgreSQL: made a float below
        select(func.coalesce(func.sum(CampaignMinute.delivered + CampaignMinute.failed), 0)).where(
            CampaignMinute.campaign_id == campaign.id, CampaignMinute.minute >= stamp - RATE_WINDOW * 60)) or 0
    rate = float(recent) / RATE_WINDOW
    finish = None
    if campaign.status == "running" and remaining and rate > 0:
        finish = (now + timedelta(minutes=remaining / rate)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"total": campaign.total, "done": done, "remaining": remaining, "rate_per_minute": round(rate, 1),
            "finish_estimate": finish}


def _with_rates(row: dict[str, Any]) -> dict[str, Any]:
    for name, parts, denominator in RATES:
        whole = row[denominator]
        row[name] = round(sum(row[p] for p in parts) / whole, 4) if whole else None
    return row


def _labels(campaign: Campaign, by: str, keys: list[str]) -> dict[str, str]:
    if by != "server" or not keys:
        return {}
    ids = [int(k) for k in keys if k.isdigit()]
    names = dict(db.session.execute(select(Server.id, Server.name).where(Server.id.in_(ids))).all())
    return {str(i): name for i, name in names.items()}


def breakdown(campaign: Campaign, by: str) -> dict[str, Any]:
    """The rows of one dimension, most letters first (by domain: the top 20, the rest summed)."""
    if by not in DIMENSIONS:
        raise FiguresError(f"by={by!r} is not a breakdown: ask for by=provider, domain, server, ip or reason")
    columns = [getattr(CampaignBreakdown, c) for c in BREAKDOWN_COLUMNS]
    # A row all of whose letters moved on (a soft bounce's reason become another) reads 0: left out.
    where = (CampaignBreakdown.campaign_id == campaign.id, CampaignBreakdown.dim == by, CampaignBreakdown.sent > 0)
    query = select(CampaignBreakdown.key, *columns).where(*where).order_by(
        CampaignBreakdown.sent.desc(), CampaignBreakdown.key)
    if by == "domain":
        query = query.limit(TOP_DOMAINS)
    rows = [dict(zip(("key",) + BREAKDOWN_COLUMNS, values)) for values in db.session.execute(query)]
    labels = _labels(campaign, by, [r["key"] for r in rows])
    for row in rows:
        row["label"] = labels.get(row["key"], row["key"])
        _with_rates(row)
    rest = None
    if by == "domain" and len(rows) == TOP_DOMAINS:
        # The rest: all domains less the top ones (summed over the few provider rows, not the domains).
        keys = db.session.scalar(select(func.count()).select_from(CampaignBreakdown).where(*where))
        if keys > TOP_DOMAINS:
            totals = db.session.execute(select(*[func.coalesce(func.sum(c), 0) for c in columns]).where(
                CampaignBreakdown.campaign_id == campaign.id, CampaignBreakdown.dim == "provider")).one()
            rest = {c: int(total) - sum(r[c] for r in rows) for c, total in zip(BREAKDOWN_COLUMNS, totals)}
            rest = _with_rates({"keys": keys - TOP_DOMAINS, **rest})
    return {"by": by, "rows": rows, "rest": rest}


def breakdowns(campaign: Campaign) -> dict[str, dict[str, Any]]:
    return {by: breakdown(campaign, by) for by in DIMENSIONS}


def breakdown_csv(table: dict[str, Any]) -> str:
    out = io.StringIO()
    rates = [name for name, _, _ in RATES]
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([table["by"], *BREAKDOWN_COLUMNS, *rates] + (["name"] if table["by"] == "server" else []))
    rest = [{**table["rest"], "key": f"(the other {table['rest']['keys']} domains)"}] if table["rest"] else []
    for row in table["rows"] + rest:
        cells = [row["key"], *(row[c] for c in BREAKDOWN_COLUMNS),
                 *("" if row[r] is None else f"{row[r]:.4f}" for r in rates)]
        writer.writerow(cells + ([row.get("label", "")] if table["by"] == "server" else []))
    return out.getvalue()


def timeline_csv(minutes: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("minute",) + TIMELINE_COLUMNS)
    for minute in minutes:
        writer.writerow([minute["minute"], *(minute[c] for c in TIMELINE_COLUMNS)])
    return out.getvalue()


def count_complaint(delivery: Delivery) -> None:
    """A complaint (an ARF report of abuse) about this letter, added to each of its breakdown rows."""
    domain = delivery.email.partition("@")[2].lower() or None  # as the triggers read it: after the first @
    provider = PROVIDER_OF.get(domain, "other") if domain else None
    keys = {"provider": provider, "domain": domain,
            "server": None if delivery.server_id is None else str(delivery.server_id),
            "ip": delivery.source_ip, "reason": delivery.bounce_reason}
    rows = [{"campaign_id": delivery.campaign_id, "dim": dim, "key": key, **dict.fromkeys(BREAKDOWN_COLUMNS, 0),
             "complaints": 1} for dim, key in sorted(keys.items()) if key is not None]
    if not rows:
        return
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(CampaignBreakdown).values(rows)
    db.session.execute(statement.on_conflict_do_update(
        index_elements=["campaign_id", "dim", "key"],
        set_={"complaints": CampaignBreakdown.complaints + statement.excluded.complaints}))
    db.session.flush()
