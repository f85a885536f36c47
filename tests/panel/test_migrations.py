"""The Alembic migrations on each backend: `flask db upgrade` builds the schema from nothing,
the models match what the migrations built (no drift for autogenerate to find), and every
migration's downgrade undoes it down to an empty database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.script import ScriptDirectory
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, inspect, text

from panel import MIGRATIONS_DIR
from panel.extensions import db

REPO = Path(__file__).resolve().parents[2]
TABLES = {"users", "api_tokens", "lists", "recipients", "campaigns", "deliveries", "servers", "alembic_version"}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_flask_db_upgrade_builds_the_schema_in_an_empty_database(empty_database_url, tmp_path):
    env = dict(os.environ, DATABASE_URL=empty_database_url, MAILFLEET_INSTANCE_PATH=str(tmp_path / "instance"),
               MAILFLEET_SECRET_KEY="x")
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "panel", "db", "upgrade"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert TABLES <= _tables(empty_database_url)


def test_the_models_match_the_migrations(app, migrating):
    with app.app_context(), db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), db.metadata)
    assert differences == []


def test_every_migration_downgrades_to_an_empty_database_and_upgrades_again(empty_app, migrating):
    url = empty_app.config["SQLALCHEMY_DATABASE_URI"]
    with empty_app.app_context(), migrating():
        upgrade()
        downgrade(revision="base")
        db.engine.dispose()
    assert _tables(url) <= {"alembic_version"}
    with empty_app.app_context(), migrating():
        upgrade()
        db.engine.dispose()
    assert TABLES <= _tables(url)


ACCOUNTS_REVISION = "c3f1a7e9d2b4"  # users.session_generation, api_tokens scope / expiry / revocation


def test_the_accounts_migration_keeps_every_users_rows_both_ways(empty_app, migrating):
    """Adding and dropping the users' and tokens' columns must not copy those tables: on SQLite a
    batch copy drops the old table with foreign keys on, deleting the users' lists by cascade."""
    before = ScriptDirectory(MIGRATIONS_DIR).get_revision(ACCOUNTS_REVISION).down_revision
    with empty_app.app_context(), migrating():
        upgrade(revision=before)
        db.session.execute(text("INSERT INTO users (id, email, password_hash, created_at) "
                                "VALUES (1, 'a@example.com', 'x', CURRENT_TIMESTAMP)"))
        db.session.execute(text("INSERT INTO api_tokens (id, user_id, name, token_hash, created_at) "
                                "VALUES (1, 1, 't', :hash, CURRENT_TIMESTAMP)"), {"hash": "ab" * 32})
        db.session.execute(text("INSERT INTO lists (id, user_id, name, fields, recipient_count, created_at) "
                                "VALUES (1, 1, 'l', '[]', 0, CURRENT_TIMESTAMP)"))
        db.session.commit()
        db.session.remove()
        upgrade(revision=ACCOUNTS_REVISION)
        assert db.session.execute(text("SELECT count(*) FROM lists")).scalar() == 1
        assert db.session.execute(text("SELECT count(*) FROM api_tokens")).scalar() == 1
        db.session.remove()
        downgrade(revision=before)
        assert db.session.execute(text("SELECT count(*) FROM lists")).scalar() == 1
        assert db.session.execute(text("SELECT count(*) FROM api_tokens")).scalar() == 1
        db.session.execute(text("DELETE FROM lists"))
        db.session.execute(text("DELETE FROM api_tokens"))
        db.session.execute(text("DELETE FROM users"))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
