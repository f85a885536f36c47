"""What the campaign page draws, kept by the database as letters change (migration e7c2a9d4b1f6).

- `campaign_minutes`: per campaign and minute (unix seconds of the minute's start, by the time the
  worker's Exim logged the outcome: `delivery_events.created_at`) the outcomes sent / delivered /
  deferred / failed, and the clicks and opens of that minute. Triggers on delivery_events, clicks
  and opens add to it.
- `campaign_breakdowns`: per campaign, dimension (provider, domain, server, ip, reason) and key,
  the letters handed to Exim by state, bounced hard/soft, unsubscribed, and the clicks and
  complaints they drew. Triggers on deliveries move a letter between rows as it changes; clicks
  add by trigger; complaints are added by services/campaign_figures.count_complaint.
- The provider of a letter is its recipient domain's in PROVIDER_DOMAINS, else "other". The
  triggers hold a copy of the table (a changed table needs a migration that makes them anew).

Deleting letters or events subtracts nothing: a campaign's figures outlive its letters (an
archived campaign keeps them); deleting the campaign takes them along.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db

DIMENSIONS = ("provider", "domain", "server", "ip", "reason")
# Well-known mailbox domains by provider, named as worker_agent/providers.py names the groups it
# shapes by. The agent finds a provider by MX (a company domain hosted at Google is "google" to it);
# the panel reads only the recipient's domain, so a letter's group never needs a DNS look-up here
# and the same letter counts under the same provider on every page ("other" for the rest).
PROVIDER_DOMAINS: dict[str, tuple[str, ...]] = {
    "google": ("gmail.com", "googlemail.com"),
    "microsoft": ("hotmail.com", "hotmail.co.uk", "hotmail.fr", "hotmail.de", "hotmail.it", "hotmail.es",
                  "outlook.com", "outlook.fr", "outlook.de", "live.com", "live.co.uk", "live.fr", "live.de",
                  "msn.com", "passport.com"),
    "yahoo": ("yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "yahoo.it", "yahoo.es", "yahoo.co.jp",
              "yahoo.com.br", "ymail.com", "rocketmail.com", "aol.com", "aim.com", "aol.co.uk"),
    "apple": ("icloud.com", "me.com", "mac.com"),
    "mailru": ("mail.ru", "bk.ru", "list.ru", "inbox.ru", "internet.ru"),
    "yandex": ("yandex.ru", "yandex.com", "ya.ru", "yandex.by", "yandex.kz", "yandex.ua"),
    "gmx": ("gmx.net", "gmx.de", "gmx.com", "gmx.at", "gmx.ch", "web.de", "mail.com"),
    "comcast": ("comcast.net",),
    "zoho": ("zoho.com", "zohomail.com", "zohomail.eu"),
    "proton": ("protonmail.com", "proton.me", "pm.me", "protonmail.ch"),
    "fastmail": ("fastmail.com", "fastmail.fm"),
    "t-online": ("t-online.de",),
}
PROVIDER_OF = {domain: provider for provider, domains in PROVIDER_DOMAINS.items() for domain in domains}


class CampaignMinute(db.Model):
    __tablename__ = "campaign_minutes"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)  # unix s, whole minute
    sent: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)
    deferred: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    opens: Mapped[int] = mapped_column(BigInteger, default=0)


class CampaignBreakdown(db.Model):
    __tablename__ = "campaign_breakdowns"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    dim: Mapped[str] = mapped_column(String(10), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    sent: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)
    deferred: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    bounced_hard: Mapped[int] = mapped_column(BigInteger, default=0)
    bounced_soft: Mapped[int] = mapped_column(BigInteger, default=0)
    complaints: Mapped[int] = mapped_column(BigInteger, default=0)
    unsubscribed: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)

