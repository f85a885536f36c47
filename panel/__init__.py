"""Mailfleet control panel: `create_app` assembles the Flask app from small register steps."""

from __future__ import annotations

import os

from flask import Flask
from werkzeug.routing import IntegerConverter

from .config import load_config
from .extensions import csrf, db, login_manager, migrate
from .models.base import MAX_ROW_ID

MIGRATIONS_DIR = os.path.join(os.path.dirname(__file__), "migrations")


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_path=os.environ.get("MAILFLEET_INSTANCE_PATH") or None)
    load_config(app, config)
    register_extensions(app)
    app.url_map.converters["int"] = RowIdConverter
    register_blueprints(app)
    register_cli(app)
    return app


class RowIdConverter(IntegerConverter):
    """`<int:…>` in the panel's URLs names rows: a number past the ids' range matches no route, a
    404 like any id that names no row (instead of a database error on PostgreSQL)."""

    def __init__(self, url_map, fixed_digits: int = 0, min: int | None = None,  # noqa: A002 (werkzeug's names)
                 max: int | None = MAX_ROW_ID, signed: bool = False) -> None:  # noqa: A002
        super().__init__(url_map, fixed_digits, min, max, signed)


def register_extensions(app: Flask) -> None:
    from . import models  # noqa: F401  (every table known to SQLAlchemy and Alembic)

    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        _tune_postgresql(app)
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, render_as_batch=True)
    login_manager.init_app(app)
    csrf.init_app(app)
    from .services.audit import watch_session

    watch_session()  # the audit log notes what each changing request and command does
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        _tune_sqlite(app)


def _tune_postgresql(app: Flask) -> None:
    """Plan every statement for its own values. psycopg prepares a statement run five times, and
    PostgreSQL may then keep one generic plan for it as long as the connection lives: a plan made
    while a table was nearly empty (a sequential scan) would stay when it holds millions of rows
    (a list import in one transaction: 60,000 rows took 91 s instead of 8 s; the daemon's queries
    as a campaign's deliveries grow)."""
    options = dict(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
    connect_args = dict(options.get("connect_args", {}))
    connect_args["options"] = f"{connect_args.get('options', '')} -c plan_cache_mode=force_custom_plan".strip()
    options["connect_args"] = connect_args
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options


def _tune_sqlite(app: Flask) -> None:
    """WAL lets the panel and the daemon read while the other writes; foreign keys are off by default.
    The database file is kept 0600 (SQLite gives its -wal and -shm files the same mode): it holds
    every tenant's lists and password hashes."""
    from sqlalchemy import event

    with app.app_context():
        engine = db.engine
        database = engine.url.database

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):  # noqa: ANN001
            _keep_private(database)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()


def _keep_private(database: str | None) -> None:
    """chmod 0600 the SQLite file and its -wal/-shm, whatever umask made them (gunicorn, the daemon, flask)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    for path in (database, database + "-wal", database + "-shm"):
        try:
            st = os.stat(path)
            if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(path, 0o600)
        except FileNotFoundError:
            pass


def register_blueprints(app: Flask) -> None:
    from .blueprints import register_all

    register_all(app)


def register_cli(app: Flask) -> None:
    from .cli import register_commands

    register_commands(app)
