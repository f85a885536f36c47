"""Leases by which daemons share the work (daemon/leases.py): one row a lease, held until it expires.

Names: `daemon:<id>` (a daemon is alive while it renews it), `server:<id>` (the daemon serving that
server), `global` (fail-over, finishing campaigns, DNS, pruning), `provision` (provisioning jobs and
the password channel), `sqlite` (the one daemon SQLite runs).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class DaemonLease(db.Model):
    __tablename__ = "daemon_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))  # host:pid:random of the daemon holding it
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)  # UTC; free to take once past
