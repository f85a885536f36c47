"""A user's suppression list: search it a page at a time, add and remove addresses, export it.

Pages are keyset pages in address order (`after` = the last address shown), so the thousandth
page costs what the first does. A search is a domain when given as `@example.org` or as a name
with a dot and no @-sign (`example.org`; its own index), else the start of an address (`ann`,
`ann@ex`; an index range).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from sqlalchemy import delete, func, or_, select

from ..extensions import db
from ..models import Suppression, User
from ..models.base import insert_unless_present, is_row_id
from . import audit
from .addresses import InvalidAddress, normalise_address
from .imports.report import csv_stream

REASONS = {
    "hard_bounce": "hard bounce",
    "soft_bounce": "soft bounces in a row",
    "complaint": "complaint",
    "unsubscribe": "unsubscribed",
    "manual": "added by hand",
}
PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class SuppressionError(Exception):
    """A change that cannot be made; the message says why."""


@dataclass
class SuppressionPage:
    items: list[Suppression]
    next_after: str | None  # pass as `after` for the next page; None on the last


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _matching(user: User, search: str | None):
    query = select(Suppression).where(Suppression.user_id == user.id)
    search = (search or "").strip().lower()
    if not search:
        return query
    if search.startswith("@") or ("@" not in search and "." in search):
        domain = search.lstrip("@")
        try:
            domain = domain.encode("idna").decode("ascii") if domain else domain
        except UnicodeError:
            pass
        return query.where(Suppression.domain == domain)
    query = query.where(Suppression.email.like(_escape_like(search) + "%", escape="\\"))
    if db.session.get_bind().dialect.name == "sqlite":
        # SQLite's LIKE is case-insensitive and so never uses an index: the same prefix as a range does.
        query = query.where(Suppression.email >= search, Suppression.email < search + "\U0010ffff")
    return query


def search_suppressions(user: User, search: str | None = None, after: str | None = None,
                        limit: int = PAGE_SIZE) -> SuppressionPage:
    """One page of the user's suppressions matching `search`, in address order, after address `after`."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    query = _matching(user, search)
    if after:
        query = query.where(Suppression.email > after.strip().lower())
    rows = list(db.session.scalars(query.order_by(Suppression.email).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return SuppressionPage(rows, rows[-1].email if more else None)


def add_suppression(user: User, address: str, reason: str = "manual") -> tuple[Suppression, bool]:
    """Suppress an address (the entry and whether it is new; one already there keeps its reason)."""
    if reason not in REASONS:
        raise SuppressionError(f"unknown reason {reason!r}: one of {', '.join(REASONS)}")
    try:
        email = normalise_address(address)
    except InvalidAddress as exc:
        raise SuppressionError(f"{address!r} is not a usable address: {exc}") from None
    added = db.session.execute(
        insert_unless_present(db.session, Suppression).values(user_id=user.id, email=email, reason=reason)
        .returning(Suppression.id)
    ).first() is not None
    db.session.flush()
    entry = db.session.scalar(select(Suppression).where(Suppression.user_id == user.id, Suppression.email == email))
    assert entry is not None
    return entry, added


def find_suppression(user: User, key: str) -> Suppression | None:
    """The user's entry by id (all digits) or address."""
    if key.isdigit():
        entry = db.session.get(Suppression, int(key)) if is_row_id(int(key)) else None
        return entry if entry is not None and entry.user_id == user.id else None
    try:
        email = normalise_address(key)
    except InvalidAddress:
        return None
    return db.session.scalar(select(Suppression).where(Suppression.user_id == user.id, Suppression.email == email))


def remove_suppression(user: User, entry: Suppression) -> None:
    """Let campaigns mail the address again."""
    db.session.execute(delete(Suppression).where(Suppression.id == entry.id, Suppression.user_id == user.id))
    audit.note("suppression.removed", entry.email, REASONS.get(entry.reason, entry.reason))
    db.session.expunge(entry)
    db.session.flush()


def count_matching(user: User, search: str | None = None) -> int:
    """How many of the user's entries a search matches (all of them for none)."""
    matching = _matching(user, search).with_only_columns(Suppression.id).subquery()
    return db.session.scalar(select(func.count()).select_from(matching)) or 0


def selected_entries(user: User, ids: list[int]) -> list[Suppression]:
    """The user's entries among these ids, in address order (another user's ids match nothing)."""
    wanted = [item for item in ids if is_row_id(item)][:MAX_PAGE_SIZE]
    if not wanted:
        return []
    return list(db.session.scalars(select(Suppression).where(Suppression.user_id == user.id, Suppression.id.in_(wanted))
                                   .order_by(Suppression.email)))


def remove_suppressions(user: User, *, ids: list[int] | None = None, emails: list[str] | None = None,
                        search: str | None = None) -> int:
    """Let campaigns mail again the user's entries with these ids or addresses, or else every entry a
    search matches (all of them for an empty search), in one statement; returns how many went."""
    query = delete(Suppression).where(Suppression.user_id == user.id)
    if ids is not None or emails is not None:
        wanted_ids = [item for item in ids or [] if is_row_id(item)]
        addresses = []
        for address in emails or []:
            try:
                addresses.append(normalise_address(address))
            except InvalidAddress:
                continue  # not an address: suppressed under no such name
        query = query.where(or_(Suppression.id.in_(wanted_ids), Suppression.email.in_(addresses)))
        what = f"{len(wanted_ids) + len(addresses)} chosen"
    else:
        query = query.where(Suppression.id.in_(_matching(user, search).with_only_columns(Suppression.id)))
        what = f"matching “{search.strip()}”" if search and search.strip() else "all"
    gone = db.session.execute(query.execution_options(synchronize_session=False)).rowcount
    audit.note("suppression.removed", f"{gone} entries", what)
    db.session.flush()
    return gone


def export_suppressions(user: User) -> Iterator[str]:
    """The user's suppression list as CSV (email, reason, created_at), streamed from a server-side
    cursor when iterated."""
    query = (select(Suppression.email, Suppression.reason, Suppression.created_at)
             .where(Suppression.user_id == user.id).order_by(Suppression.email).execution_options(yield_per=5000))

    def rows() -> Iterator[tuple[str, str, str]]:
        for email, reason, created in db.session.execute(query):
            yield email, reason, created.isoformat(sep=" ", timespec="seconds")

    return csv_stream(["email", "reason", "created_at"], rows())
