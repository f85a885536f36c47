"""Recipient lists, their recipients and the user's suppression list."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from .base import utcnow


class MailingList(db.Model):
    __tablename__ = "lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Names of the custom fields recipients of this list carry (CSV columns besides email).
    fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Kept up to date by the services, so pages never count millions of rows.
    recipient_count: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Archived (services/tidy.py): hidden from the lists page and the composer, restorable.
    archived_at: Mapped[datetime | None]

    recipients: Mapped[list[Recipient]] = relationship(
        back_populates="mailing_list", cascade="all, delete-orphan", passive_deletes=True, lazy="dynamic"
    )


class Recipient(db.Model):
    __tablename__ = "recipients"
    __table_args__ = (UniqueConstraint("list_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    # Normalised: domain lower-cased. Looked up with its list: the unique (list_id, email) index,
    # no index of its own (one more for every imported row to keep; migration a9d4e6b2c1f8).
    email: Mapped[str] = mapped_column(String(320))
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when the recipient was unsubscribed through the API (the address is suppressed too).
    unsubscribed_at: Mapped[datetime | None]

    mailing_list: Mapped[MailingList] = relationship(back_populates="recipients")


def _domain_of_email(context: Any) -> str:
    return str(context.get_current_parameters().get("email") or "").rpartition("@")[2]


class Suppression(db.Model):
    """Addresses no campaign of this user may mail again: unsubscribes, hard bounces, complaints, manual."""

    __tablename__ = "suppressions"
    __table_args__ = (
        UniqueConstraint("user_id", "email"),
        # Searching a user's list by domain, in address order (keyset pages).
        Index("ix_suppressions_user_domain", "user_id", "domain", "email"),
        # Address prefixes (LIKE 'ab%') on PostgreSQL whatever the database's collation; SQLite
        # searches the unique (user_id, email) index by range instead.
        Index("ix_suppressions_user_email_pattern", "user_id", "email", postgresql_ops={"email": "text_pattern_ops"}),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    # The address's domain, filled in from `email` by every INSERT (ORM or Core) through this model.
    domain: Mapped[str] = mapped_column(String(255), default=_domain_of_email)
    reason: Mapped[str] = mapped_column(String(30))  # unsubscribe | hard_bounce | soft_bounce | complaint | manual
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
