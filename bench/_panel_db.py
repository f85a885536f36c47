"""Shared by the panel benchmarks: a fresh database per backend (an SQLite file, or a database
on a throw-away PostgreSQL server from devserver/postgres.py) migrated by the real migrations,
an app on it, and set-based SQL that fills it fast."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402

BACKENDS = ("sqlite", "postgresql")


def backends_from_argv() -> tuple[str, ...]:
    chosen = [arg for arg in sys.argv[1:] if arg in BACKENDS]
    return tuple(chosen) or BACKENDS


@contextlib.contextmanager
def panel_app(backend: str, **config) -> Iterator[Flask]:
    """An app on an empty, migrated database of `backend`, removed afterwards."""
    from flask_migrate import upgrade

    from panel import create_app
    from panel.extensions import db

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailfleet-bench-")))
        if backend == "postgresql":
            from devserver.postgres import PostgresServer

            server = stack.enter_context(PostgresServer())
            url = server.create_database("bench")
        else:
            url = f"sqlite:///{tmp / 'bench.db'}"
        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": "bench", "TESTING": False, **config})
        with app.app_context():
            upgrade()
            db.session.remove()
        yield app
        with app.app_context():
            db.engine.dispose()


def numbers(backend: str, count: int) -> str:
    """SQL of a derived table `n(i)` holding 1..count, built by the database itself."""
    if backend == "postgresql":
        return f"(SELECT generate_series(1, {count}) AS i) AS n"
    return (f"(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {count}) "
            f"SELECT i FROM s) AS n")


def fill_list(backend: str, list_id: int, count: int, start: int = 1, domain: str = "example.org") -> None:
    """Add `count` recipients u<start>@domain … to a list with one INSERT … SELECT, and keep its count."""
    from sqlalchemy import text

    from panel.extensions import db

    db.session.execute(text(
        f"INSERT INTO recipients (list_id, email, fields, created_at) "
        f"SELECT {list_id}, 'u' || (i + {start - 1}) || '@{domain}', '{{}}', CURRENT_TIMESTAMP FROM {numbers(backend, count)}"
    ))
    db.session.execute(text(f"UPDATE lists SET recipient_count = recipient_count + {count} WHERE id = {list_id}"))


def fill_suppressions(backend: str, user_id: int, count: int, start: int = 1, domain: str = "example.org") -> None:
    from sqlalchemy import text

    from panel.extensions import db

    db.session.execute(text(
        f"INSERT INTO suppressions (user_id, email, domain, reason, created_at) "
        f"SELECT {user_id}, 'u' || (i + {start - 1}) || '@{domain}', '{domain}', 'manual', CURRENT_TIMESTAMP "
        f"FROM {numbers(backend, count)}"
    ))


def analyze(backend: str) -> None:
    """Fresh planner statistics after a bulk load, as autovacuum / a DBA would have them."""
    from sqlalchemy import text

    from panel.extensions import db

    db.session.commit()
    if backend == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    else:
        db.session.execute(text("ANALYZE"))
        db.session.commit()


def make_user_and_server(app: Flask) -> int:
    """A user with one ready server of two IPs; its id."""
    from panel.extensions import db
    from panel.services.servers import SourceIP, register_server
    from panel.services.users import create_user

    user = create_user("bench@example.com", "bench password")
    register_server(user, name="worker", host="worker.example.net", port=8443,
                    agent_key="kTm0Yd0pAIh3m0xfYd4ZpZ3Qc2Yt2jXk4kq3J2yC9zE=", fingerprint="ab" * 32,
                    ips=[SourceIP(ip="192.0.2.10", helo="mx1.example.net"), SourceIP(ip="192.0.2.11", helo="mx2.example.net")])
    db.session.commit()
    return user.id
