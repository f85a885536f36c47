"""Shared helpers of the models: column defaults, the range of ids, and an INSERT that skips
duplicates on either backend."""

from datetime import datetime, timezone
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


# Ids are INTEGER columns. PostgreSQL refuses to compare one with a larger number ("integer out of
# range") where SQLite finds no row: an id given from outside (a URL, a request) is checked first.
MAX_ROW_ID = 2**31 - 1


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def is_row_id(value: object) -> bool:
    """Whether `value` could be the id of a row (a whole number from 1 to MAX_ROW_ID)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ROW_ID


def insert_unless_present(session: Session, model: Any) -> Any:
    """`INSERT … ON CONFLICT DO NOTHING` for the session's database (SQLite and PostgreSQL spell it
    the same; SQLAlchemy has it per dialect). Where two writers add the same unique row at once, the
    second waits for the first and inserts nothing (rowcount 0) instead of failing on the constraint."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(model).on_conflict_do_nothing()
