"""Fixtures for provisioning tests: the panel's app/browser/seed fixtures (tests/panel) on an
instance folder of the test's own, and a Provisioner whose password channel listens there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from devserver.testhost import TEST_NETWORK
from panel import create_app
from panel.daemon.provision import Provisioner
from panel.extensions import db
from tests.panel.conftest import (  # noqa: F401  (fixtures shared with the panel's tests)
    SECRET,
    Browser,
    Seed,
    fast_password_hashing,
    migrated_db,
    preserved_logging,
)
from tests.conftest import Databases


ALLOWED_EXAMPLE_NETWORK = "192.0.2.0/24"


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    path = tmp_path / "instance"
    path.mkdir()
    return path


@pytest.fixture
def database_url(databases: Databases, migrated_db: str, instance: Path) -> Iterator[str]:  # noqa: F811
    """A migrated database of the test's own (an SQLite one in the instance folder), removed afterwards."""
    url = databases.new(instance / "mailfleet.db", template=migrated_db)
    yield url
    databases.drop(url)


@pytest.fixture
def app(database_url: str, instance: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    monkeypatch.setenv("MAILFLEET_INSTANCE_PATH", str(instance))
    app = create_app({
        "TESTING": True, "SECRET_KEY": SECRET, "SQLALCHEMY_DATABASE_URI": database_url,
        "PUBLIC_URL": "http://panel.example.com", "BOUNCE_DOMAIN": "bounces.example.com",
        "WTF_CSRF_ENABLED": True,
        # The panel connects to no host in its own networks unless allowed: the test hosts' veth
        # network, and the documentation network of add_form's example (this machine may be on it).
        "ALLOWED_HOST_NETWORKS": f"{TEST_NETWORK},{ALLOWED_EXAMPLE_NETWORK}",
    })
    assert Path(app.instance_path) == instance
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def browser(app: Flask) -> Browser:
    return Browser(app.test_client())


@pytest.fixture
def seed(app: Flask) -> Seed:
    return Seed(app)


@pytest.fixture
def channel(app: Flask) -> Iterator[Provisioner]:
    """The daemon's password channel listening (its provisioning thread not started)."""
    provisioner = Provisioner(app)
    provisioner.channel.start()
    yield provisioner
    provisioner.channel.stop()


def add_form(**fields: Any) -> dict[str, Any]:
    data = {"name": "fresh worker", "host": "192.0.2.50", "ssh_port": "22",
            "root_password": "Sup3r-Secret-Root-Pw", "ips": "192.0.2.50=mx1.example.net\n192.0.2.51\n"}
    data.update(fields)
    return data
