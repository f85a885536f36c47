"""Sending servers (workers), their IP addresses and what happened to them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from .base import utcnow


class Server(db.Model):
    __tablename__ = "servers"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    api_port: Mapped[int] = mapped_column(default=8443)
    # The worker's Fernet key and its TLS certificate fingerprint (SHA-256 hex), pinned.
    agent_key: Mapped[str] = mapped_column(String(64))
    cert_fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="new")  # new | online | offline
    last_seen_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # Highest outcome event seq stored; sent back to the agent as its ack.
    outcome_ack: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    ips: Mapped[list[ServerIP]] = relationship(
        back_populates="server", cascade="all, delete-orphan", order_by="ServerIP.id"
    )

    @property
    def api_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.api_port}"


class ServerIP(db.Model):
    __tablename__ = "server_ips"
    __table_args__ = (UniqueConstraint("server_id", "ip"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    ip: Mapped[str] = mapped_column(String(45))
    helo: Mapped[str] = mapped_column(String(255))
    weight: Mapped[int] = mapped_column(default=1)
    active: Mapped[bool] = mapped_column(default=True)

    server: Mapped[Server] = relationship(back_populates="ips")


class ServerEvent(db.Model):
    """Things a user should see on the server's page: went offline, came back, push errors."""

    __tablename__ = "server_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
