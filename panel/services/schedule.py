"""A draft's scheduled start: checked and stored in UTC (with the zone it was given in, to show it
back), and started by the daemon when its time comes through the same start as a manual one
(services.sending.start_campaign: quotas, recipients, the audit log).

Exactly once: the daemon takes a due campaign with one conditional UPDATE (schedule still set,
still a draft); a second daemon's UPDATE then matches no row and it starts nothing.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import select, update

from ..extensions import db
from ..models import Campaign, User
from ..models.base import utcnow
from . import audit
from .campaigns import CampaignError, CampaignLocked
from .sending import SendingError, start_campaign

log = logging.getLogger(__name__)

DEFAULT_ZONE = "UTC"
ISO_EXAMPLE = "2026-12-24T09:00:00+01:00"


class ScheduleInvalid(CampaignError):
    """The time or zone given cannot be used; the message says why and what to send instead."""


@lru_cache(maxsize=1)
def zone_names() -> list[str]:
    """The IANA zones this system knows, sorted (what the composer's select offers)."""
    return sorted(name for name in available_timezones() if "/" in name or name == "UTC")


def check_zone(name: str | None) -> str:
    name = (name or DEFAULT_ZONE).strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleInvalid(f"{name} is not a time zone: use an IANA name such as Europe/Paris or UTC") from None
    if name not in zone_names():
        raise ScheduleInvalid(f"{name} is not a time zone: use an IANA name such as Europe/Paris or UTC")
    return name


def parse_iso(text: object) -> datetime:
    """An ISO 8601 date and time with its offset, as an aware datetime."""
    if not isinstance(text, str):
        raise ScheduleInvalid(f"scheduled_at must be a string such as {ISO_EXAMPLE}")
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScheduleInvalid(f"scheduled_at {text!r} is not a date and time: send ISO 8601 such as {ISO_EXAMPLE}") from None
    if when.tzinfo is None:
        raise ScheduleInvalid(f"scheduled_at {text!r} has no offset: give its offset, e.g. {ISO_EXAMPLE}, "
                              "or Z for UTC")
    return when


def local_to_aware(day: date, at: time, zone: str) -> datetime:
    """The composer's date and time on the wall clock of `zone`."""
    return datetime.combine(day, at, tzinfo=ZoneInfo(check_zone(zone)))


def schedule_campaign(campaign: Campaign, when: datetime, zone: str | None = None) -> None:
    """Schedule the draft to start at the aware datetime `when` (shown in `zone`)."""
    if campaign.status != "draft":
        raise CampaignLocked(f"the campaign is {campaign.status}; only a draft can be scheduled")
    zone = check_zone(zone)
    at = when.astimezone(timezone.utc).replace(tzinfo=None)
    now = utcnow()
    if at <= now:
        shown = when.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")
        raise ScheduleInvalid(f"the start {shown} {zone} is in the past: choose a later time")
    campaign.scheduled_at = at
    campaign.schedule_zone = zone
    campaign.schedule_error = None
    db.session.flush()


def unschedule_campaign(campaign: Campaign) -> bool:
    """Take the schedule off a draft; False if it had none."""
    if campaign.status != "draft":
        raise CampaignLocked(f"the campaign is {campaign.status}; it has no scheduled start")
    had = campaign.scheduled_at is not None
    campaign.scheduled_at = None
    campaign.schedule_error = None
    db.session.flush()
    return had


def local_time(campaign: Campaign) -> datetime | None:
    """The scheduled start on the wall clock of its zone."""
    if campaign.scheduled_at is None:
        return None
    return campaign.scheduled_at.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(campaign.schedule_zone or DEFAULT_ZONE))


def due_campaign_ids(now: datetime | None = None) -> list[int]:
    now = now or utcnow()
    return list(db.session.scalars(
        select(Campaign.id).where(Campaign.status == "draft", Campaign.scheduled_at.is_not(None),
                                  Campaign.scheduled_at <= now).order_by(Campaign.scheduled_at, Campaign.id)))


def _take(campaign_id: int, now: datetime, **values) -> bool:
    """The conditional UPDATE that lets one caller, and only one, act on a due schedule."""
    return db.session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == "draft", Campaign.scheduled_at.is_not(None),
               Campaign.scheduled_at <= now)
        .values(scheduled_at=None, **values)
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def start_scheduled(campaign_id: int, now: datetime | None = None) -> bool:
    """Start one due campaign if this caller is the one that takes it; the caller commits. A start
    that fails (no recipients, a quota) is rolled back whole and leaves the draft unscheduled with
    the reason on its page: trying again each tick would only repeat it."""
    now = now or utcnow()
    if not _take(campaign_id, now, schedule_error=None):
        return False
    campaign = db.session.get(Campaign, campaign_id)
    db.session.refresh(campaign)
    user = db.session.get(User, campaign.user_id)
    target = f"campaign {campaign.id} ({campaign.name})"
    try:
        start_campaign(user, campaign)
    except SendingError as exc:
        db.session.rollback()  # the letters it may have written go too; the schedule is back
        reason = str(exc)
        if _take(campaign_id, now, schedule_error=reason):
            audit.record("campaign.schedule_failed", target, reason, actor_id=user.id, actor_email=user.email,
                         via="sched")
            log.info("scheduled start of campaign %s failed: %s", campaign_id, reason)
        db.session.flush()
        return False
    audit.record("campaign.started", target, "at its scheduled time", actor_id=user.id, actor_email=user.email,
                 via="sched")
    db.session.flush()
    return True


def start_due_campaigns(now: datetime | None = None) -> list[int]:
    """Start every campaign whose time has come; the ids started. Each is committed on its own,
    so one that fails does not hold up the others."""
    started = []
    for campaign_id in due_campaign_ids(now):
        if start_scheduled(campaign_id, now):
            started.append(campaign_id)
        db.session.commit()
    db.session.commit()  # none due: end the look's transaction, not left open for the daemon's next work
    return started
