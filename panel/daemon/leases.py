"""Leases in the database by which several daemons share the work (models/daemon_lease.py).

A lease is taken or renewed by one atomic upsert that succeeds only where the row is free, expired
or already this daemon's, so two daemons never hold one lease at once, whatever their timing. A
daemon that dies stops renewing; its leases expire and others take them. On PostgreSQL the time is
the database's (daemons on several machines need no common clock); SQLite runs one daemon, on one
machine, and uses that machine's.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

from sqlalchemy import DateTime, delete, literal_column, or_, select, type_coerce
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..models import DaemonLease
from ..models.base import utcnow

SQLITE_LEASE = "sqlite"


class OnlyOneDaemon(RuntimeError):
    """SQLite runs one daemon and another one holds the database; the message says what to do."""


def daemon_id() -> str:
    """host:pid:random — unique even when a pid is reused, and says where the daemon runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _now(session: Session):  # noqa: ANN202 (a datetime or an SQL expression of one)
    if _postgres(session):
        # UTC without a zone, as every time column of the panel; clock_timestamp(): not the transaction's start.
        return type_coerce(literal_column("(clock_timestamp() AT TIME ZONE 'UTC')"), DateTime)
    return utcnow()


def take(session: Session, name: str, holder: str, seconds: float) -> bool:
    """Take the lease, or renew it if it is already `holder`'s, for `seconds`; False if another
    daemon holds it. Committed."""
    now = _now(session)
    dialect = postgresql if _postgres(session) else sqlite
    insert = dialect.insert(DaemonLease).values(name=name, holder=holder, expires_at=now + timedelta(seconds=seconds))
    statement = insert.on_conflict_do_update(
        index_elements=[DaemonLease.name],
        set_={"holder": insert.excluded.holder, "expires_at": insert.excluded.expires_at},
        where=or_(DaemonLease.holder == holder, DaemonLease.expires_at < now),
    ).returning(DaemonLease.name)
    taken = session.execute(statement).first() is not None
    session.commit()
    return taken


def release(session: Session, holder: str, names: list[str] | None = None) -> None:
    """Give leases back at once (all of `holder`'s without names), so others need not wait for them to expire."""
    statement = delete(DaemonLease).where(DaemonLease.holder == holder)
    if names is not None:
        statement = statement.where(DaemonLease.name.in_(names))
    session.execute(statement)
    session.commit()


def held(session: Session, prefix: str) -> dict[str, str]:
    """Unexpired leases whose name starts with `prefix`: name -> holder."""
    rows = session.execute(
        select(DaemonLease.name, DaemonLease.holder)
        .where(DaemonLease.name.startswith(prefix, autoescape=True), DaemonLease.expires_at > _now(session))
    ).all()
    session.commit()
    return dict(rows)


def prune(session: Session, older_than: float = 600.0) -> None:
    """Forget leases long expired (daemons gone, servers removed): the table holds live ones and a few more."""
    session.execute(delete(DaemonLease).where(DaemonLease.expires_at < _now(session) - timedelta(seconds=older_than)))
    session.commit()


def holder_of(session: Session, name: str) -> tuple[str, datetime] | None:
    row = session.execute(select(DaemonLease.holder, DaemonLease.expires_at).where(DaemonLease.name == name)).first()
    session.commit()
    return (row[0], row[1]) if row else None


def _alive_here(holder: str) -> bool:
    """Whether the holder is a process still running on this machine (True if it cannot be told)."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user has that pid now
    return True


def claim_sqlite(session: Session, holder: str, seconds: float) -> None:
    """The one daemon of an SQLite database. A daemon of this machine that died (SIGKILL) leaves its
    leases behind: they are taken over at once rather than after they expire. OnlyOneDaemon if
    another daemon runs."""
    if take(session, SQLITE_LEASE, holder, seconds):
        return
    other = holder_of(session, SQLITE_LEASE)
    if other is not None and not _alive_here(other[0]):
        release(session, other[0])
        if take(session, SQLITE_LEASE, holder, seconds):
            return
        other = holder_of(session, SQLITE_LEASE)
    who = "unknown"
    if other is not None:
        host, _, rest = other[0].partition(":")
        who = f"{host}, pid {rest.partition(':')[0]}"
    raise OnlyOneDaemon(
        f"another daemon ({who}) is running on this SQLite database; SQLite runs one daemon — use PostgreSQL to run "
        f"several. If that daemon is stopped, this one can start once its lease ends ({seconds:g} s after it stopped).")
