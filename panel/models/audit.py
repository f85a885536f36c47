"""The audit log: who did what and when (services/audit.py writes it, the admin area reads it)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .base import utcnow


class AuditEntry(db.Model):
    __tablename__ = "audit_entries"
    __table_args__ = (Index("ix_audit_entries_action_id", "action", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # The acting account (NULL once it is deleted, or for a failed login); its e-mail is kept in
    # actor_email so the entry still says who. "cli" for commands run on the panel's host.
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    actor_email: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(40))  # e.g. "campaign.started", "login.failed"
    target: Mapped[str] = mapped_column(String(400), default="")  # e.g. "campaign 5 (Spring news)"
    detail: Mapped[str] = mapped_column(Text, default="")
    address: Mapped[str | None] = mapped_column(String(45))  # the client's IP address
    via: Mapped[str] = mapped_column(String(5), default="web")  # web, api or cli
