"""Test letters of a campaign: sent to a few addresses through the real path (an agent, its Exim),
kept apart from the campaign's deliveries so they count in none of its figures."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .base import utcnow


class TestLetter(db.Model):
    """One test letter. On the agent its id is `-id` (deliveries have positive ids: the outcome
    handling tells them apart by the sign) and its campaign `-campaign_id`. Persisted before the
    push, pushed (again) under `push_token` until an agent answered: queued once."""

    __test__ = False  # not a pytest class
    __tablename__ = "test_letters"
    __table_args__ = (Index("ix_test_letters_server_status", "server_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    source_ip: Mapped[str] = mapped_column(String(45))
    sending_domain: Mapped[str | None] = mapped_column(String(253))
    # The batch id the agent knows the push by: one per test (all its addresses), random so a
    # restored database never names a batch the agent has seen.
    push_token: Mapped[str] = mapped_column(String(40))
    # pending (not pushed yet) | queued | sent | delivered | deferred | failed
    status: Mapped[str] = mapped_column(String(20), default="pending")
    code: Mapped[int | None]
    reply: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    @staticmethod
    def new_push_token() -> str:
        return "test-" + secrets.token_hex(12)
