"""Quotas per user: letters a day and a month, recipients stored, lists, campaigns running at once.

An admin sets them (set_quota; no row or a NULL is no limit). They are checked where each thing
grows: a list's creation (list_refusal), an import (recipients_refusal), a campaign's start
(start_refusal), and, while a campaign sends, the daemon's dispatch (letters_allowed before a
claim, count_letters in the claim's own transaction), so a user's letters stop being handed to
servers once the day's or the month's are used up and go on when the next day or month begins.
Days and months are UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects import postgresql, sqlite

from ..extensions import db
from ..models import QUOTA_FIELDS, Campaign, MailingList, User, UserLetterCount, UserQuota
from ..models.base import utcnow

MAX_QUOTA = 2**31 - 1
_LOCK_SPACE = 0x5154  # pg_advisory_xact_lock(_LOCK_SPACE, user id): one claim of a user's letters at a time


class QuotaError(Exception):
    """A quota that cannot be set; the message says why."""


def quota_of(user_id: int) -> UserQuota:
    """The user's quotas (an unsaved row of no limits if none was set)."""
    return db.session.get(UserQuota, user_id) or UserQuota(user_id=user_id)


def set_quota(user_id: int, values: dict[str, Any]) -> UserQuota:
    """Set the quotas named in `values` (a whole number from 0, or None for no limit); others stay."""
    unknown = sorted(set(values) - set(QUOTA_FIELDS))
    if unknown:
        raise QuotaError(f"unknown quota {', '.join(unknown)}: the quotas are {', '.join(QUOTA_FIELDS)}")
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA):
            raise QuotaError(f"{name} must be a whole number, 0 or more (or empty for no limit), not {value!r}")
    row = db.session.get(UserQuota, user_id)
    if row is None:
        row = UserQuota(user_id=user_id)
        db.session.add(row)
    for name, value in values.items():
        setattr(row, name, value)
    db.session.flush()
    return row


def quota_json(row: UserQuota) -> dict[str, int | None]:
    return {name: getattr(row, name) for name in QUOTA_FIELDS}


def _periods(now: datetime | None = None) -> tuple[str, str]:
    now = now or utcnow()
    return now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")


def letters_sent(user_id: int) -> tuple[int, int]:
    """Letters handed to servers today and this month (UTC)."""
    day, month = _periods()
    counts = dict(db.session.execute(select(UserLetterCount.period, UserLetterCount.letters).where(
        UserLetterCount.user_id == user_id, UserLetterCount.period.in_((day, month)))).all())
    return counts.get(day, 0), counts.get(month, 0)


def count_letters(user_id: int, letters: int) -> None:
    """Add `letters` to today's and this month's counts (in the caller's transaction)."""
    if letters <= 0:
        return
    insert = postgresql.insert if db.session.get_bind().dialect.name == "postgresql" else sqlite.insert
    for period in _periods():
        statement = insert(UserLetterCount).values(user_id=user_id, period=period, letters=letters)
        db.session.execute(statement.on_conflict_do_update(
            index_elements=["user_id", "period"], set_={"letters": UserLetterCount.letters + letters}))


def _used_up(quota: UserQuota, user_id: int) -> tuple[int | None, str | None]:
    """(letters still allowed now or None for no limit, the message saying which quota is used up)."""
    if quota.letters_per_day is None and quota.letters_per_month is None:
        return None, None
    day, month = letters_sent(user_id)
    left = []
    if quota.letters_per_day is not None:
        left.append((quota.letters_per_day - day,
                     f"your daily quota of {quota.letters_per_day:,} letters is used up ({day:,} sent today): "
                     "sending goes on at 00:00 UTC, or ask the panel's admin to raise it"))
    if quota.letters_per_month is not None:
        left.append((quota.letters_per_month - month,
                     f"your monthly quota of {quota.letters_per_month:,} letters is used up ({month:,} sent this "
                     "month): sending goes on when the next month begins (UTC), or ask the panel's admin to raise it"))
    room, message = min(left, key=lambda pair: pair[0])
    return max(room, 0), message if room <= 0 else None


def letters_allowed(user_id: int, wanted: int) -> int:
    """How many of `wanted` letters the user's day and month still allow (the dispatch claims no
    more). On PostgreSQL a claim holds a lock per user with a quota until it commits, so two servers
    claiming at once cannot both take the last of the day; SQLite's claims are one at a time already."""
    quota = db.session.get(UserQuota, user_id)
    if quota is None or (quota.letters_per_day is None and quota.letters_per_month is None):
        return wanted
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(:space, :user)"),
                           {"space": _LOCK_SPACE, "user": user_id})
    room, _ = _used_up(quota, user_id)
    return wanted if room is None else min(wanted, room)


def sending_held(user_id: int) -> str | None:
    """Why the user's letters are not being handed to servers now (a used-up quota), if they are not."""
    return _used_up(quota_of(user_id), user_id)[1]


def start_refusal(user: User) -> str | None:
    """Why a campaign of `user` may not start now, if a quota forbids it."""
    quota = quota_of(user.id)
    if quota.running_campaigns is not None:
        running = db.session.scalar(select(func.count()).select_from(Campaign).where(
            Campaign.user_id == user.id, Campaign.status == "running"))
        if running >= quota.running_campaigns:
            return (f"your quota allows at most {quota.running_campaigns} campaigns running at once and "
                    f"{running} are: wait for one to finish, pause or cancel one, or ask the panel's admin")
    return _used_up(quota, user.id)[1]


def list_refusal(user: User) -> str | None:
    quota = quota_of(user.id)
    if quota.lists is None:
        return None
    count = db.session.scalar(select(func.count()).select_from(MailingList).where(MailingList.user_id == user.id))
    if count >= quota.lists:
        return (f"you have {count} lists and your quota of {quota.lists} list{'s' if quota.lists != 1 else ''} "
                "allows no more: delete one, or ask the panel's admin to raise it")
    return None


def recipients_refusal(user_id: int, adding: int) -> str | None:
    """Why adding `adding` recipients would go past the user's quota of recipients stored, if it would."""
    quota = quota_of(user_id)
    if quota.recipients is None or adding <= 0:
        return None
    stored = db.session.scalar(select(func.coalesce(func.sum(MailingList.recipient_count), 0)).where(
        MailingList.user_id == user_id))
    if stored + adding > quota.recipients:
        return (f"adding {adding:,} recipients would make {stored + adding:,}, over your quota of "
                f"{quota.recipients:,} recipients stored in all your lists: nothing was added; remove some, "
                "or ask the panel's admin to raise it")
    return None


