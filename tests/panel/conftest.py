"""Fixtures for the panel's tests: an app on a real database built by the Alembic migrations
(run once per session and backend; each test then gets a copy of the SQLite file, or on
PostgreSQL a copy made once from the migrated database as its template and emptied before each
test), a test client that logs in and sends CSRF tokens like a browser, a CLI runner, and small
helpers to seed data.

Every test that uses the app runs twice, as `[sqlite]` and as `[postgresql]` (see
`db_backend` in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from panel import create_app
from panel.extensions import db
from panel.models import User
from panel.services import users as user_service
from panel.services.campaigns import CampaignInput, save_campaign
from panel.services.csv_import import import_records
from panel.services.lists import create_list
from panel.services.servers import SourceIP, register_server
from panel.services.tracking import dispose_counting_engine
from tests.conftest import Databases
from tests.panel.agents import Agent, Agents

SECRET = "test-secret-key"
PASSWORD = "correct horse battery"
FERNET_KEY = "kTm0Yd0pAIh3m0xfYd4ZpZ3Qc2Yt2jXk4kq3J2yC9zE="
FINGERPRINT = "ab" * 32
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


@contextlib.contextmanager
def preserved_logging() -> Iterator[None]:
    """Alembic's env.py runs logging.fileConfig, which would silence every logger created so
    far (other teams' tests rely on theirs) and drop pytest's capture handlers: undo that."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved = {
        name: (logger.disabled, logger.level, list(logger.handlers), logger.propagate)
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    try:
        yield
    finally:
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
        for name, logger in logging.root.manager.loggerDict.items():
            if not isinstance(logger, logging.Logger):
                continue
            if name in saved:
                logger.disabled, level, handlers, logger.propagate = saved[name]
                logger.setLevel(level)
                logger.handlers[:] = handlers
            else:
                logger.disabled = False


def make_app(database_url: str, **overrides: Any) -> Flask:
    config = {
        "TESTING": True,
        "SECRET_KEY": SECRET,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "PUBLIC_URL": "http://panel.example.com",
        "BOUNCE_DOMAIN": "bounces.example.com",
        "WTF_CSRF_ENABLED": True,  # as in production: every form post needs its token
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt at its production cost takes ~0.1 s a hash; the tests make hundreds."""
    from functools import partial

    from werkzeug.security import generate_password_hash

    monkeypatch.setattr(user_service, "generate_password_hash", partial(generate_password_hash, method="pbkdf2:sha256:1000"))


@pytest.fixture(scope="session")
def migrated_db(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of an empty database made by `flask db upgrade` (the real migrations), once per
    session and backend; tests get copies of it (`database_url`)."""
    from flask_migrate import upgrade

    url = databases.new(tmp_path_factory.mktemp("schema") / "migrated.db")
    app = make_app(url)
    with app.app_context(), preserved_logging():
        upgrade()
        db.engine.dispose()  # PostgreSQL copies a template only while nobody is connected to it
    return url


@pytest.fixture
def database_url(databases: Databases, migrated_db: str, tmp_path: Path) -> Iterator[str]:
    """A migrated database of the test's own, removed afterwards."""
    url = databases.new(tmp_path / "panel.db", template=migrated_db)
    yield url
    databases.drop(url)


@pytest.fixture
def empty_app(empty_database_url: str) -> Iterator[Flask]:
    """An app on a database with no tables at all (for `init-db`)."""
    app = make_app(empty_database_url)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def migrating():
    """Context manager for code that runs the Alembic migrations in-process."""

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        with preserved_logging():
            yield

    return guard


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    """A real agent (gunicorn, TLS, sealed) on loopback: the module's app_config must allow 127.0.0.0/8."""
    running = Agent(tmp_path / "agent")
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    """Fake agents (tests/panel/agents.py), each a process of its own, stopped at teardown."""
    started = Agents(tmp_path / "agents")
    yield started
    started.stop()


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Per-test config overrides (a test module can override this fixture)."""
    return {}


@pytest.fixture
def app(database_url: str, app_config: dict[str, Any]) -> Iterator[Flask]:
    app = make_app(database_url, **app_config)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
        dispose_counting_engine(app)


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


class Browser:
    """A test client that behaves like a browser: keeps its session and puts the page's
    CSRF token into every form it posts (unless told `csrf=False`)."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.token: str | None = None

    def _remember(self, response):
        match = CSRF_RE.search(response.get_data(as_text=True)) if response.mimetype == "text/html" else None
        if match:
            self.token = match.group(1)
        return response

    def get(self, url: str, **kwargs):
        return self._remember(self.client.get(url, **kwargs))

    def post(self, url: str, data: dict | None = None, csrf: bool = True, **kwargs):
        data = dict(data or {})
        if csrf:
            if self.token is None:
                self.get("/login")
            data.setdefault("csrf_token", self.token)
        return self._remember(self.client.post(url, data=data, **kwargs))

    def login(self, email: str, password: str = PASSWORD):
        self.token = None
        self.get("/login")
        response = self.post("/login", {"email": email, "password": password})
        self.token = None  # a new session after login: fetch a fresh token on the next post
        self.get("/campaigns/")
        return response


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def browser(app: Flask) -> Browser:
    return Browser(app.test_client())


class Seed:
    """Makes rows through the services, each in its own app context and committed; returns ids."""

    password = PASSWORD

    def __init__(self, app: Flask) -> None:
        self.app = app

    def user(self, email: str, password: str = PASSWORD) -> int:
        with self.app.app_context():
            user = user_service.create_user(email, password)
            db.session.commit()
            return user.id

    def token(self, user_id: int) -> str:
        with self.app.app_context():
            token = user_service.create_api_token(db.session.get(User, user_id), "test")
            db.session.commit()
            return token

    def list(self, user_id: int, name: str, records: list[dict] | None = None) -> int:
        with self.app.app_context():
            mailing_list = create_list(db.session.get(User, user_id), name)
            if records:
                import_records(mailing_list, records)
            db.session.commit()
            return mailing_list.id

    def server(self, user_id: int, name: str = "worker 1", ips: tuple[str, ...] = ("192.0.2.10",)) -> int:
        with self.app.app_context():
            server = register_server(
                db.session.get(User, user_id), name=name, host="worker1.example.net", port=8443,
                agent_key=FERNET_KEY, fingerprint=FINGERPRINT,
                ips=[SourceIP(ip=ip, helo=f"mx{n}.example.net") for n, ip in enumerate(ips, start=1)],
            )
            db.session.commit()
            return server.id

    def campaign(self, user_id: int, list_ids: list[int], **fields: Any) -> int:
        data = {
            "name": "Spring news", "subject": "News for {{ name }}", "from_email": "news@example.com",
            "from_name": "Example News", "text": "Hello {{ name }}\nBye: {{ unsubscribe_url }}\n",
            "html": None, "encoding": "quoted-printable", "lists": list_ids,
        }
        data.update(fields)
        with self.app.app_context():
            campaign = save_campaign(db.session.get(User, user_id), CampaignInput(**data))
            db.session.commit()
            return campaign.id

    def get(self, model: type, object_id: int) -> Any:
        """A fresh row, read in its own app context and detached, for assertions."""
        with self.app.app_context():
            row = db.session.get(model, object_id)
            if row is not None:
                db.session.expunge(row)
            return row

    def query(self, fn):
        """Run fn(session) in an app context and return its result (plain values, please)."""
        with self.app.app_context():
            return fn(db.session)


@pytest.fixture
def seed(app: Flask) -> Seed:
    return Seed(app)


@pytest.fixture
def alice(seed: Seed) -> int:
    return seed.user("alice@example.com")


@pytest.fixture
def bob(seed: Seed) -> int:
    return seed.user("bob@example.com")


@pytest.fixture
def as_alice(browser: Browser, alice: int) -> Browser:
    browser.login("alice@example.com")
    return browser


@pytest.fixture
def bob_objects(seed: Seed, bob: int) -> dict[str, int]:
    """One of everything, owned by Bob."""
    list_id = seed.list(bob, "Bob's list", [{"email": "carol@example.org", "name": "Carol"}])
    server_id = seed.server(bob, "bob's worker")
    campaign_id = seed.campaign(bob, [list_id])
    return {"list": list_id, "server": server_id, "campaign": campaign_id}

