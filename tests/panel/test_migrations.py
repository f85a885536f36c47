"""The Alembic migrations on each backend: `flask db upgrade` builds the schema from nothing,
the models match what the migrations built (no drift for autogenerate to find), and every
migration's downgrade undoes it down to an empty database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, inspect

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
