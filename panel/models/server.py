"""Sending servers (workers), their IP addresses and what happened to them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, ForeignKey, String, Text, UniqueConstraint, and_
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from .base import utcnow


READY_STATES = ("new", "online", "offline")
JOB_KINDS = ("add", "reprovision", "reconfigure", "remove")
JOB_STATES = ("queued", "running", "succeeded", "failed")


class Server(db.Model):
    __tablename__ = "servers"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    api_port: Mapped[int] = mapped_column(default=8443)
    # SSH: the port the panel provisions through, and the host key recorded on first use
    # (known_hosts lines) with its SHA256 fingerprint as `ssh-keygen -l` shows it.
    ssh_port: Mapped[int] = mapped_column(default=22, server_default="22")
    host_key: Mapped[str | None] = mapped_column(Text)
    host_key_fingerprint: Mapped[str | None] = mapped_column(Text)
    # The worker's Fernet key (sealed by services.secret_box; services.agent_keys opens it) and its
    # TLS certificate fingerprint (SHA-256 hex), pinned. Empty while the panel is still setting the
    # server up (filled when setup succeeds).
    agent_key: Mapped[str | None] = mapped_column(Text)
    # A new key (sealed) the daemon is to hand to the agent in a message sealed with the current one
    # (POST /v1/key); it becomes agent_key once the agent took it (`flask servers rotate-key`).
    agent_key_next: Mapped[str | None] = mapped_column(Text)
    cert_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # new | online | offline, and provisioning | failed | removed while the panel sets it up or takes it down
    status: Mapped[str] = mapped_column(String(20), default="new", index=True)
    last_seen_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # Highest outcome event seq stored; sent back to the agent as its ack, with the epoch of the
    # agent's queue it counts in (a reinstalled agent's fresh queue has another; NULL: none heard yet).
    outcome_ack: Mapped[int] = mapped_column(default=0)
    outcome_epoch: Mapped[str | None] = mapped_column(String(64))
    # Settings the daemon pushes to the agent (HELO names, rate limits): bumped on every change;
    # config_applied is the version the agent last said it holds (0: none pushed yet).
    config_version: Mapped[int] = mapped_column(default=0, server_default="0")
    config_applied: Mapped[int] = mapped_column(default=0, server_default="0")
    # The agent's backoff per (source IP, provider) as its last ping reported it, JSON (services/shaping.py).
    shaping: Mapped[str | None] = mapped_column(Text)
    # Each warming IP's day and letters per provider today as its last ping reported them, JSON (services/warmup.py).
    warmup: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    ips: Mapped[list[ServerIP]] = relationship(
        back_populates="server", cascade="all, delete-orphan", order_by="ServerIP.id"
    )
    rate_limits: Mapped[list[ServerRateLimit]] = relationship(
        back_populates="server", cascade="all, delete-orphan",
        order_by="(ServerRateLimit.source_ip, ServerRateLimit.domain)",
    )

    @hybrid_property
    def ready(self) -> bool:
        """Its agent is installed and known: the daemon may ping it and push to it."""
        return self.status in READY_STATES and bool(self.agent_key and self.cert_fingerprint)

    @ready.inplace.expression
    @classmethod
    def _ready_expression(cls) -> ColumnElement[bool]:
        return and_(cls.status.in_(READY_STATES), cls.agent_key.is_not(None), cls.cert_fingerprint.is_not(None))

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
    # Warm-up (services/warmup.py): when its day 1 began (UTC; NULL: not warming up) and its schedule
    # (JSON steps; NULL: the default one, worker_agent/warmup.py).
    warmup_start: Mapped[datetime | None]
    warmup_schedule: Mapped[str | None] = mapped_column(Text)

    server: Mapped[Server] = relationship(back_populates="ips")


class ServerRateLimit(db.Model):
    """At most ``per_minute`` letters a minute from ``source_ip`` to ``domain`` ("*": any), on one server."""

    __tablename__ = "server_rate_limits"
    __table_args__ = (UniqueConstraint("server_id", "source_ip", "domain"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    source_ip: Mapped[str] = mapped_column(String(45))
    domain: Mapped[str] = mapped_column(String(253))
    per_minute: Mapped[int]

    server: Mapped[Server] = relationship(back_populates="rate_limits")


class ServerEvent(db.Model):
    """Things a user should see on the server's page: went offline, came back, push errors."""

    __tablename__ = "server_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProvisionJob(db.Model):
    """One run of the playbooks against a server, done by the daemon; its log is kept.

    kind: add (bootstrap.yml with the root password, then worker.yml with the panel's key),
    reprovision (worker.yml, key only), reconfigure (reconfigure.yml), remove (decommission.yml).
    The root password is never stored: it travels from the web view to the daemon's memory.
    """

    __tablename__ = "provision_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    needs_password: Mapped[bool] = mapped_column(default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    current_task: Mapped[str | None] = mapped_column(Text)
    tasks_done: Mapped[int] = mapped_column(default=0, server_default="0")
    log: Mapped[str] = mapped_column(Text, default="", server_default="")
    error: Mapped[str | None] = mapped_column(Text)

    server: Mapped[Server] = relationship()

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")
