"""A server of an admin's lent to another user, who may send through it (services/server_shares.py)."""

from __future__ import annotations

from sqlalchemy import ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class ServerShare(db.Model):
    __tablename__ = "server_shares"

    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True)
    # Indexed: the servers a user may send through are looked up by user.
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
