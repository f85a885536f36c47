"""Accounts, their API tokens and the failed-login counters."""

from __future__ import annotations

from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import Float, ForeignKey, Index, String
from sqlalchemy import false as sa_false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from .base import utcnow


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Part of every session's and remember cookie's user id (get_id): bumped by logout and by a
    # password change, so a cookie copied before is refused after.
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")
    # An admin manages users, quotas, shared servers and reads the audit log (blueprints/admin).
    is_admin: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    # Set by an admin: no login, no session, no token works until it is cleared; the rows stay.
    disabled_at: Mapped[datetime | None]

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan")

    def get_id(self) -> str:
        return f"{self.id}:{self.session_generation}"


TOKEN_SCOPES = ("read", "write")  # read: GET and HEAD only; write: everything


class ApiToken(db.Model):
    """Only a SHA-256 of the token is stored; the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    scope: Mapped[str] = mapped_column(String(5), default="write", server_default="write")  # TOKEN_SCOPES
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="tokens")

    def state(self, now: datetime) -> str:
        """"active", "revoked" or "expired"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class ApiRateBucket(db.Model):
    """A token bucket per API token, kept in the database so every gunicorn worker shares it
    (services/rate_limit.py): `tokens` left at `at` (seconds since the epoch)."""

    __tablename__ = "api_rate_buckets"

    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float)


class LoginThrottle(db.Model):
    """Failed logins counted per key ("pair:<address> <email>", "addr:<address>", "user:<email>"),
    kept in the database so every gunicorn worker shares them (services/login_throttle.py):
    `failures` since the count last started, the last one at `at` (seconds since the epoch)."""

    __tablename__ = "login_throttles"
    __table_args__ = (Index("ix_login_throttles_at", "at"),)

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int]
    at: Mapped[float] = mapped_column(Float)
