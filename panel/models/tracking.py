"""Masked links and opens: a campaign's link list, and every click and open counted.

The redirect target of a click comes from ``campaign_links`` (the URLs written literally in the
campaign's templates, numbered when the draft is saved: the tokens carry the number), or, for a
URL built from a recipient's fields, from the signed token itself (``Click.url``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .base import utcnow


class CampaignLink(db.Model):
    __tablename__ = "campaign_links"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)  # the number tokens carry
    url: Mapped[str] = mapped_column(Text)


class Click(db.Model):
    """One click on a masked link (GET; HEAD and other methods are not counted).

    No foreign keys (migration b5e1d7c3a9f2): the campaign and letter come from a signed token, and
    PostgreSQL's checks of them took a third of a click's time."""

    __tablename__ = "clicks"
    __table_args__ = (
        # Per link: clicks and distinct recipients, read in index order (the campaign page, /stats).
        Index("ix_clicks_campaign_link_delivery", "campaign_id", "link_idx", "delivery_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int]
    delivery_id: Mapped[int]
    link_idx: Mapped[int | None]  # a link of campaign_links; None: the URL came in the token
    url: Mapped[str | None] = mapped_column(Text)  # only for a URL that came in the token
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Open(db.Model):
    """One load of a letter's open pixel (no foreign keys either)."""

    __tablename__ = "opens"
    __table_args__ = (Index("ix_opens_campaign_delivery", "campaign_id", "delivery_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int]
    delivery_id: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
