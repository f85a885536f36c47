"""A server's mailbox provider settings: its limits per (source IP, provider) and its own provider table."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class ServerProviderLimit(db.Model):
    """Limits from ``source_ip`` ("*": each) to ``provider`` ("*": each; a name of the server's provider
    table, or a recipient domain outside it) on one server; NULL: no limit of that kind. While a server
    has none for a (source IP, provider), the built-in default for that provider applies."""

    __tablename__ = "server_provider_limits"
    __table_args__ = (UniqueConstraint("server_id", "source_ip", "provider"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    source_ip: Mapped[str] = mapped_column(String(45))
    provider: Mapped[str] = mapped_column(String(253))
    per_minute: Mapped[int | None]
    per_hour: Mapped[int | None]
    connections: Mapped[int | None]
    per_connection: Mapped[int | None]


class ServerProviderTable(db.Model):
    """The server's own provider table (JSON {"<provider>": ["<MX host suffix>", …]}); no row: the built-in one."""

    __tablename__ = "server_provider_tables"

    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True)
    providers: Mapped[str] = mapped_column(Text)
