"""The audit log: who did what and when.

Most entries are written by one watcher on the session (watch_session): before each flush made
for a changing request (POST, PUT, PATCH, DELETE) or a CLI command, it looks at the rows that
flush adds, changes and deletes (campaigns, lists, imports, servers and their settings, domains,
tokens, users, quotas) and notes what happened to each. So an action reached by a new view, an
API route or a command is logged without anyone remembering to: the watcher sees the rows, not
the code path. Logins and failed logins change no row of these and are noted by the login view
(record). Only column names go in `detail`, never values: a server's key or a domain's TSIG
secret must not land in the log. The daemon's own changes (a campaign finishing) are not entries.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import g, has_request_context, request
from sqlalchemy import event, func, inspect, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

from ..extensions import db
from ..models import (QUOTA_FIELDS, AuditEntry, Campaign, Domain, ImportJob, MailingList, Server, ServerShare, User,
                      UserQuota)
from ..models.base import utcnow
from ..models.user import ApiToken

PAGE_SIZE = 100
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Actor:
    user_id: int | None
    email: str | None
    address: str | None
    via: str
    seen: set[tuple[str, str]] = field(default_factory=set)  # (action, target) noted in this request


_cli_actor: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("audit_cli_actor", default=None)


@contextlib.contextmanager
def acting_from_cli() -> Iterator[None]:
    """Changes made inside are logged with "cli" as the actor (a command on the panel's host)."""
    token = _cli_actor.set(Actor(None, "cli", None, "cli"))
    try:
        yield
    finally:
        _cli_actor.reset(token)


def _request_actor() -> Actor | None:
    """Whoever makes the current changing request (None: not a request that changes things)."""
    if not has_request_context() or request.method in READ_METHODS:
        return None
    actor = g.get("audit_actor")
    if actor is None:
        from flask_login import current_user

        user = g.get("api_user") or (current_user if current_user.is_authenticated else None)
        actor = Actor(user.id if user else None, user.email if user else None, request.remote_addr,
                      "api" if g.get("api_user") else "web")
        if user is not None:  # not before the API has authenticated the token (its own flush comes first)
            g.audit_actor = actor
    return actor


def current_actor() -> Actor | None:
    return _cli_actor.get() or _request_actor()


def record(action: str, target: str = "", detail: str = "", *, actor_id: int | None = None,
           actor_email: str | None = None, address: str | None = None, via: str = "web") -> AuditEntry:
    """Add one entry to the session (the caller commits)."""
    entry = AuditEntry(at=utcnow(), actor_id=actor_id, actor_email=(actor_email or "")[:320] or None,
                       action=action, target=target[:400], detail=detail, address=address, via=via)
    db.session.add(entry)
    return entry


def note(action: str, target: str, detail: str = "") -> None:
    """An entry for the current request's or command's actor (nothing outside one), for what the
    watcher cannot see (set-based deletes) or to say more than it would (the watcher then skips
    its own entry of the same action and target)."""
    actor = current_actor()
    if actor is None or (action, target) in actor.seen:
        return
    actor.seen.add((action, target))
    record(action, target, detail, actor_id=actor.user_id, actor_email=actor.email, address=actor.address,
           via=actor.via)


# -- the watcher ------------------------------------------------------------------------------

def _changed(obj: Any) -> list[str]:
    """Names of the columns whose value this flush changes."""
    state = inspect(obj)
    return [attr.key for attr in state.mapper.column_attrs if state.attrs[attr.key].history.has_changes()]


def _new_value(obj: Any, key: str) -> Any:
    added = inspect(obj).attrs[key].history.added
    return added[0] if added else None


def _server_name(session: Session, server_id: int | None) -> str:
    with session.no_autoflush:
        server = session.get(Server, server_id) if server_id is not None else None
    return f"server {server_id} ({server.name})" if server is not None else f"server {server_id}"


def _list_name(session: Session, list_id: int) -> str:
    with session.no_autoflush:
        item = session.get(MailingList, list_id)
    return f"list {list_id} ({item.name})" if item is not None else f"list {list_id}"


def _user_name(session: Session, user_id: int) -> str:
    with session.no_autoflush:
        user = session.get(User, user_id)
    return f"user {user_id} ({user.email})" if user is not None else f"user {user_id}"


def _quota_detail(quota: UserQuota) -> str:
    """The quotas as they now are (numbers, no secret in them)."""
    return ", ".join(f"{name} {'no limit' if getattr(quota, name) is None else getattr(quota, name)}"
                     for name in QUOTA_FIELDS)


CAMPAIGN_STATUS_ACTIONS = {"running": "campaign.started", "paused": "campaign.paused",
                           "cancelled": "campaign.cancelled"}
# Columns a request may touch on the way without anyone acting on the object.
QUIET_COLUMNS = {"last_used_at", "session_generation", "updated_at"}


def _notes(session: Session) -> Iterator[tuple[str, str, str]]:
    """(action, target, detail) for each row this flush adds, changes or deletes that the log keeps."""
    for obj in list(session.new):
        if isinstance(obj, Campaign):
            yield "campaign.created", f"campaign ({obj.name})", ""
        elif isinstance(obj, MailingList):
            yield "list.created", f"list ({obj.name})", ""
        elif isinstance(obj, ImportJob):
            yield "list.imported", _list_name(session, obj.list_id), f"file {obj.filename} queued"
        elif isinstance(obj, Server):
            yield "server.added", f"server ({obj.name}, {obj.host})", ""
        elif isinstance(obj, Domain):
            yield "domain.added", f"domain ({obj.name})", f"kind {obj.kind}"
        elif isinstance(obj, ApiToken):
            yield "token.created", f"token ({obj.name})", f"scope {obj.scope}"
        elif isinstance(obj, User):
            yield "user.created", f"user ({obj.email})", "admin" if obj.is_admin else ""
        elif isinstance(obj, UserQuota):
            yield "quota.changed", _user_name(session, obj.user_id), _quota_detail(obj)
        elif isinstance(obj, ServerShare):
            yield "server.shared", _server_name(session, obj.server_id), f"with {_user_name(session, obj.user_id)}"
        elif getattr(obj, "server_id", None) is not None and _is_server_setting(obj):
            yield "server.changed", _server_name(session, obj.server_id), f"{type(obj).__name__} added"
    for obj in list(session.dirty):
        if not session.is_modified(obj):
            continue
        changed = [key for key in _changed(obj) if key not in QUIET_COLUMNS]
        if not changed:
            continue
        if isinstance(obj, Campaign):
            if "archived_at" in changed:  # services/tidy.py
                yield ("campaign.archived" if obj.archived_at else "campaign.restored"), f"campaign {obj.id} ({obj.name})", ""
            elif "status" in changed and (action := CAMPAIGN_STATUS_ACTIONS.get(_new_value(obj, "status"))):
                before = inspect(obj).attrs["status"].history.deleted
                if action == "campaign.started" and before and before[0] == "paused":
                    action = "campaign.resumed"
                yield action, f"campaign {obj.id} ({obj.name})", ""
            elif "status" not in changed:
                yield "campaign.changed", f"campaign {obj.id} ({obj.name})", ", ".join(changed)
        elif isinstance(obj, MailingList):
            if "archived_at" in changed:  # services/tidy.py
                yield ("list.archived" if obj.archived_at else "list.restored"), f"list {obj.id} ({obj.name})", ""
                continue
            value = _new_value(obj, "recipient_count") if "recipient_count" in changed else None
            if isinstance(value, ClauseElement):  # an import adding to the count
                yield "list.imported", f"list {obj.id} ({obj.name})", ""
            elif "recipient_count" not in changed:
                yield "list.changed", f"list {obj.id} ({obj.name})", ", ".join(changed)
        elif isinstance(obj, Server):
            yield "server.changed", f"server {obj.id} ({obj.name})", ", ".join(changed)
        elif isinstance(obj, Domain):
            yield "domain.changed", f"domain {obj.id} ({obj.name})", ", ".join(changed)
        elif isinstance(obj, ApiToken) and "revoked_at" in changed:
            yield "token.revoked", f"token {obj.id} ({obj.name})", f"of user {obj.user_id}"
        elif isinstance(obj, UserQuota):
            yield "quota.changed", _user_name(session, obj.user_id), _quota_detail(obj)
        elif isinstance(obj, User):
            target = f"user {obj.id} ({obj.email})"
            if "disabled_at" in changed:
                yield ("user.disabled" if obj.disabled_at else "user.enabled"), target, ""
            if "password_hash" in changed:
                yield "user.password_changed", target, ""
            if "is_admin" in changed:
                yield "user.role_changed", target, "admin" if obj.is_admin else "user"
        elif getattr(obj, "server_id", None) is not None and _is_server_setting(obj):
            yield "server.changed", _server_name(session, obj.server_id), f"{type(obj).__name__}: {', '.join(changed)}"
    for obj in list(session.deleted):
        if isinstance(obj, Campaign):
            yield "campaign.deleted", f"campaign {obj.id} ({obj.name})", ""
        elif isinstance(obj, MailingList):
            yield "list.deleted", f"list {obj.id} ({obj.name})", f"{obj.recipient_count} recipients"
        elif isinstance(obj, Server):
            yield "server.removed", f"server {obj.id} ({obj.name})", ""
        elif isinstance(obj, Domain):
            yield "domain.removed", f"domain {obj.id} ({obj.name})", ""
        elif isinstance(obj, ServerShare):
            yield "server.unshared", _server_name(session, obj.server_id), f"from {_user_name(session, obj.user_id)}"
        elif isinstance(obj, User):
            yield "user.deleted", f"user {obj.id} ({obj.email})", ""
        elif getattr(obj, "server_id", None) is not None and _is_server_setting(obj):
            yield "server.changed", _server_name(session, obj.server_id), f"{type(obj).__name__} removed"


# A server's settings (IPs, rate limits, provider limits and table, warm-up), not its events or jobs.
SERVER_SETTING_TABLES = frozenset({"server_ips", "server_rate_limits", "server_provider_limits",
                                   "server_provider_tables"})


def _is_server_setting(obj: Any) -> bool:
    return getattr(obj, "__tablename__", None) in SERVER_SETTING_TABLES


def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    actor = current_actor()
    if actor is None:
        return
    for action, target, detail in _notes(session):
        key = (action, target)
        if key in actor.seen:
            continue
        actor.seen.add(key)
        session.add(AuditEntry(at=utcnow(), actor_id=actor.user_id, actor_email=actor.email, action=action,
                               target=target[:400], detail=detail, address=actor.address, via=actor.via))


def watch_session() -> None:
    """Install the watcher once for every session of the app (Flask-SQLAlchemy's Session class)."""
    from flask_sqlalchemy.session import Session as FlaskSession

    if not event.contains(FlaskSession, "before_flush", _before_flush):
        event.listen(FlaskSession, "before_flush", _before_flush)


# -- reading it -------------------------------------------------------------------------------

def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search(q: str = "", action: str = "", before: int | None = None, limit: int | None = PAGE_SIZE):
    """Entries newest first whose actor, action, target, detail or address holds `q` (any case),
    of `action` if given, older than id `before` if given."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc())
    if q.strip():
        pattern = _like(q.strip().lower())
        query = query.where(or_(*(func.lower(column).like(pattern, escape="\\") for column in (
            AuditEntry.actor_email, AuditEntry.action, AuditEntry.target, AuditEntry.detail, AuditEntry.address))))
    if action:
        query = query.where(AuditEntry.action == action)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    if limit is not None:
        query = query.limit(limit)
    return db.session.scalars(query)


def known_actions() -> list[str]:
    return sorted(db.session.scalars(select(AuditEntry.action).distinct()))


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds") + "Z"


CSV_COLUMNS = ("id", "at", "actor", "action", "target", "detail", "address", "via")


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "at": _when(entry.at), "actor": entry.actor_email, "actor_id": entry.actor_id,
            "action": entry.action, "target": entry.target, "detail": entry.detail, "address": entry.address,
            "via": entry.via}


def csv_lines(q: str = "", action: str = "") -> Iterator[str]:
    """The matching entries as CSV, a line at a time (the whole log may be long)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for entry in search(q, action, limit=None):
        row = entry_json(entry)
        writer.writerow([_safe_cell(row[column]) for column in CSV_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()


def _safe_cell(value: Any) -> Any:
    """A cell a spreadsheet would run as a formula (=, +, -, @ first) is prefixed with a quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value
