"""A user's sending and tracking domains, and how their DNS records are published."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .base import utcnow

DOMAIN_KINDS = ("sending", "tracking")
DMARC_POLICIES = ("none", "quarantine", "reject")
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224", "hmac-sha1", "hmac-md5")
BOUNCE_LABEL = "bounces"


def bounce_domain_of(sending_domain: str) -> str:
    """The Return-Path domain of letters sent for a sending domain (its MX points at the workers)."""
    return f"{BOUNCE_LABEL}.{sending_domain}"


class Domain(db.Model):
    """A domain whose records Mailfleet keeps by RFC 2136 updates signed with the user's TSIG key.

    ``tsig_secret`` and ``dkim_private_key`` hold secrets sealed by ``services.secret_box``
    (Fernet under the instance's key): never shown back, never logged.
    """

    __tablename__ = "domains"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(253))
    kind: Mapped[str] = mapped_column(String(10), default="sending")  # sending | tracking
    zone: Mapped[str] = mapped_column(String(253))  # the zone the updates go to (the name or a parent)
    # The user's authoritative DNS server and the TSIG key it takes updates signed with.
    dns_host: Mapped[str] = mapped_column(String(255))
    dns_port: Mapped[int] = mapped_column(default=53)
    tsig_name: Mapped[str] = mapped_column(String(255))
    tsig_algorithm: Mapped[str] = mapped_column(String(20), default="hmac-sha256")
    tsig_secret: Mapped[str] = mapped_column(Text)  # sealed
    # DKIM: the selector, the sealed private key (PEM) deployed to the workers, the public key (base64 DER).
    dkim_selector: Mapped[str | None] = mapped_column(String(63))
    dkim_private_key: Mapped[str | None] = mapped_column(Text)  # sealed
    dkim_public_key: Mapped[str | None] = mapped_column(Text)
    dmarc_policy: Mapped[str] = mapped_column(String(20), default="none")
    dmarc_rua: Mapped[str | None] = mapped_column(String(320))
    # What was last published: a digest of the wanted records (the daemon publishes again when the
    # user's IPs change it) and the [name, type] RRsets, so those no longer wanted are deleted.
    # dns_state: pending | published | failed (dns_error says why).
    published_digest: Mapped[str | None] = mapped_column(String(64))
    dns_state: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    dns_error: Mapped[str | None] = mapped_column(Text)
    dns_attempt_at: Mapped[datetime | None]  # the last time the records were sent
    published: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def bounce_domain(self) -> str:
        """The Return-Path domain of letters sent from this domain; its MX points at the workers."""
        return bounce_domain_of(self.name)
