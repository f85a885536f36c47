"""Quotas per user, set by an admin, and the letters each user's campaigns handed to servers a day
and a month (what the day's and month's quotas are checked against; services/quotas.py)."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db

QUOTA_FIELDS = ("letters_per_day", "letters_per_month", "recipients", "lists", "running_campaigns")


class UserQuota(db.Model):
    """One row per user with any quota; a NULL column (or no row) is no limit."""

    __tablename__ = "user_quotas"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    letters_per_day: Mapped[int | None]
    letters_per_month: Mapped[int | None]
    recipients: Mapped[int | None]  # stored in all their lists
    lists: Mapped[int | None]
    running_campaigns: Mapped[int | None]  # running at once (paused ones do not count)


class UserLetterCount(db.Model):
    """Letters a user's campaigns handed to servers in a UTC day ("2026-12-04") or month ("2026-12"),
    counted by the daemon's dispatch in the transaction that claims them."""

    __tablename__ = "user_letter_counts"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    period: Mapped[str] = mapped_column(String(10), primary_key=True)
    letters: Mapped[int] = mapped_column(default=0)
