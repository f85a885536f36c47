"""A campaign's letters counted by state, kept by the database itself.

Triggers on `deliveries` (made by the migration c9f3b5d2e8a1: row triggers on SQLite, statement
triggers over transition tables on PostgreSQL) add and subtract in the same transaction as
every INSERT, UPDATE or DELETE of a letter, whatever code runs it, so the campaign page and
`/stats` read a few rows instead of counting a million letters. Names: `status:<state>`,
`bounce:hard`, `bounce:soft`, `unsubscribed`, and `server:<server id>:<state>` for the letters a
server holds (migration b8d4f6a2c3e7).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class CampaignCount(db.Model):
    __tablename__ = "campaign_counts"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(30), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
