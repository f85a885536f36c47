"""Campaigns, their per-recipient deliveries and what happened to each."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, Text
from sqlalchemy import false as sa_false
from sqlalchemy import text as sql_text
from sqlalchemy import true as sa_true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from .base import utcnow
from .mailing_list import MailingList
from .domain import Domain
from .server import Server, ServerIP

ENCODINGS = ("7bit", "quoted-printable", "base64")
CAMPAIGN_STATES = ("draft", "running", "paused", "cancelled", "finished")
# Delivery states; the last four are what the recipient's server said (deferred may still change).
DELIVERY_STATES = ("pending", "queued", "sent", "delivered", "deferred", "failed", "cancelled")
FINAL_STATES = frozenset({"delivered", "failed", "cancelled"})
PRIORITIES = range(1, 11)
DEFAULT_PRIORITY = 5

campaign_lists = Table(
    "campaign_lists",
    db.Model.metadata,
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True),
)
campaign_exclude_lists = Table(
    "campaign_exclude_lists",
    db.Model.metadata,
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True),
)
campaign_servers = Table(
    "campaign_servers",
    db.Model.metadata,
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
    Column("server_id", Integer, ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True),
)


# Source IPs chosen for a campaign (none: every active IP of its servers); daemon/dispatch.py uses only these.
campaign_source_ips = Table(
    "campaign_source_ips",
    db.Model.metadata,
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
    Column("server_ip_id", Integer, ForeignKey("server_ips.id", ondelete="CASCADE"), primary_key=True),
)


campaign_domains = Table(
    "campaign_domains",
    db.Model.metadata,
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
    Column("domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"), primary_key=True),
)
campaign_tracking_domains = Table(
    "campaign_tracking_domains",
    db.Model.metadata,
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
    Column("domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"), primary_key=True),
)


class Campaign(db.Model):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(998))
    from_email: Mapped[str] = mapped_column(String(320))
    from_name: Mapped[str | None] = mapped_column(String(200))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    text: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    encoding: Mapped[str] = mapped_column(String(20), default="quoted-printable")
    status: Mapped[str] = mapped_column(String(20), default="draft", index=True)
    # Its weight among the same user's running campaigns on a server (1-10; users share evenly).
    priority: Mapped[int] = mapped_column(default=DEFAULT_PRIORITY, server_default=str(DEFAULT_PRIORITY))
    total: Mapped[int] = mapped_column(default=0)  # recipients resolved at start
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # A draft's scheduled start (UTC; NULL: not scheduled), the IANA zone it was given in (for showing
    # it back), and why the daemon could not start it when its time came (services/schedule.py).
    scheduled_at: Mapped[datetime | None] = mapped_column(index=True)
    schedule_zone: Mapped[str | None] = mapped_column(String(64))
    schedule_error: Mapped[str | None] = mapped_column(Text)
    # Archived (services/tidy.py): its letters and events deleted, its state and figures kept.
    archived_at: Mapped[datetime | None]

    lists: Mapped[list[MailingList]] = relationship(secondary=campaign_lists)
    exclude_lists: Mapped[list[MailingList]] = relationship(secondary=campaign_exclude_lists)
    servers: Mapped[list[Server]] = relationship(secondary=campaign_servers)
    source_ips: Mapped[list[ServerIP]] = relationship(secondary=campaign_source_ips, order_by="ServerIP.id")
    # Sending domains the letters rotate through (Return-Path, DKIM, HELO follow); none: the panel's bounce domain.
    domains: Mapped[list[Domain]] = relationship(secondary=campaign_domains, order_by="Domain.name")
    # Masked links and the open pixel (services/tracking.py); the hosts of the masked links (the
    # letters take turns), none: the panel's PUBLIC_URL.
    track_clicks: Mapped[bool] = mapped_column(default=True, server_default=sa_true())
    track_opens: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    tracking_domains: Mapped[list[Domain]] = relationship(secondary=campaign_tracking_domains, order_by="Domain.name")

    @property
    def format(self) -> str:
        if self.text and self.html:
            return "multipart"
        return "html" if self.html else "plain"


class Delivery(db.Model):
    """One letter of a campaign to one address; the unit the daemon pushes and tracks."""

    __tablename__ = "deliveries"
    __table_args__ = (
        # A campaign's letters in one state, newest change first (the page's latest failures).
        Index("ix_deliveries_campaign_status_updated", "campaign_id", "status", "updated_at", "id"),
        # Letters not yet taken by a server (server_id NULL) in id order: what a server's claim reads.
        Index("ix_deliveries_dispatch", "campaign_id", "server_id", "status", "id"),
        # A server's window (letters on its agent, not yet in its Exim), per campaign: only those rows.
        Index("ix_deliveries_server_queued", "server_id", "campaign_id",
              postgresql_where=sql_text("status = 'queued'"), sqlite_where=sql_text("status = 'queued'")),
        Index("ix_deliveries_email", "email"),  # a recipient's history across campaigns (soft bounces)
        # A batch's letters. Letters start without one: leaving the NULLs out spares a campaign's
        # start an index entry per letter that no query reads (migration 54b964245abc).
        Index("ix_deliveries_batch_id", "batch_id", postgresql_where=sql_text("batch_id IS NOT NULL"),
              sqlite_where=sql_text("batch_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    # recipient_id and server_id carry no foreign key: starting a campaign writes a million of them
    # in one INSERT … SELECT from the rows themselves, and checking each again took seconds
    # (migration fd6e2f53dfd6). Deleting a recipient or a server sets them to NULL
    # (services/recipients.delete_recipient, services/provisioning.delete_server).
    recipient_id: Mapped[int | None]
    email: Mapped[str] = mapped_column(String(320))
    # The server, IP and sending domain are chosen when a server takes the letter (daemon/dispatch.py),
    # not at start: until then the letter belongs to the campaign and any server of it may take it.
    server_id: Mapped[int | None]
    source_ip: Mapped[str | None] = mapped_column(String(45))
    sending_domain: Mapped[str | None] = mapped_column(String(253))  # the campaign domain this letter goes out for
    status: Mapped[str] = mapped_column(String(20), default="pending")
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("dispatch_batches.id", ondelete="SET NULL"))
    code: Mapped[int | None]  # last SMTP reply code from the recipient's server
    reply: Mapped[str | None] = mapped_column(Text)  # and its text
    unsubscribed_at: Mapped[datetime | None]
    # What a bounce or a refusal said about this letter (services/bounces): hard | soft, and why.
    bounce: Mapped[str | None] = mapped_column(String(10))
    bounce_reason: Mapped[str | None] = mapped_column(String(30))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeliveryEvent(db.Model):
    """Every outcome an agent reported, in order: the history behind a delivery's state."""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20))
    code: Mapped[int | None]
    text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DispatchBatch(db.Model):
    """Recipients handed to one server in one push. Persisted before the push, so a daemon
    restarted mid-push pushes the same batch again (the agent queues it once)."""

    __tablename__ = "dispatch_batches"
    __table_args__ = (
        Index("ix_dispatch_batches_status", "status", "server_id"),
        Index("ix_dispatch_batches_server_campaign", "server_id", "campaign_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The batch's name on the agent: random, not the row id, which a panel database restored from a
    # backup would hand out again (the agent would take a new batch for one it has seen).
    token: Mapped[str] = mapped_column(String(40), default=lambda: secrets.token_hex(12))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | pushed
    size: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    pushed_at: Mapped[datetime | None]

    @property
    def agent_batch_id(self) -> str:
        return f"c{self.campaign_id}-{self.token}"


class BounceMessage(db.Model):
    """A raw message that came back to a VERP or unsubscribe address, and (for bounces) what
    the classifier read in it; `classified_at` is set once it has been applied."""

    __tablename__ = "bounce_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int | None] = mapped_column(ForeignKey("servers.id", ondelete="SET NULL"))
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"), index=True)
    kind: Mapped[str] = mapped_column(String(20), default="bounce")  # bounce | unsubscribe
    token: Mapped[str | None] = mapped_column(String(100))
    raw: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    recipient: Mapped[str | None] = mapped_column(String(320))  # the failed address the message names
    reason: Mapped[str | None] = mapped_column(String(30))  # userunknown, mailboxfull, feedback, …
    bounce_kind: Mapped[str | None] = mapped_column(String(10))  # hard | soft | none
    dsn: Mapped[str | None] = mapped_column(String(20))
    code: Mapped[int | None]
    # The message names another address than the letter's (forwarding, or a stray report):
    # whatever it says is applied to the letter's own address, never to the one named.
    mismatch: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    classified_at: Mapped[datetime | None] = mapped_column(index=True)
