"""Letters sent before per-letter tokens grew to 64 bits of MAC, whose short tokens still work.

VERP and unsubscribe tokens were ``<delivery id>-<10 hex>`` (40 bits of HMAC) until migration
6d1f0c3b8a27, which made new ones ``<delivery id>-<16 hex>`` and recorded here the newest letter
that existed then. Unsubscribe links and addresses in letters already sent must keep working, so a
short token is still accepted, but only for a letter up to that id (services/tokens.py).
"""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class ShortTokenCutoff(db.Model):
    __tablename__ = "short_token_cutoffs"

    kind: Mapped[str] = mapped_column(String(20), primary_key=True)  # "delivery": VERP and unsubscribe tokens
    max_id: Mapped[int]  # the newest row whose short token is accepted; 0: none
