"""Shared helpers of the models: column defaults, and an INSERT that skips duplicates on either backend."""

from datetime import datetime, timezone
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def insert_unless_present(session: Session, model: Any) -> Any:
    """`INSERT … ON CONFLICT DO NOTHING` for the session's database (SQLite and PostgreSQL spell it
    the same; SQLAlchemy has it per dialect). Where two writers add the same unique row at once, the
    second waits for the first and inserts nothing (rowcount 0) instead of failing on the constraint."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(model).on_conflict_do_nothing()
