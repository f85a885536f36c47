"""Helpers to drive the whole system (`stack`, in tests/conftest.py: started once per module and
database backend) and to read the panel's database as its processes see it."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from sqlalchemy import Engine, create_engine

from devserver.stack import LocalStack, StackSettings


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base + "/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def _check(self, response: requests.Response) -> Any:
        assert response.status_code < 300, f"{response.request.method} {response.url}: {response.status_code} {response.text}"
        return response.json()

    def get(self, path: str) -> Any:
        return self._check(self.session.get(self.base + path, timeout=30))

    def post(self, path: str, body: Any) -> Any:
        return self._check(self.session.post(self.base + path, json=body, timeout=60))


@pytest.fixture(scope="module")
def api(stack) -> Api:
    return Api(stack.panel_url, stack.api_token)


@pytest.fixture(scope="module")
def panel_engine(stack: LocalStack) -> Iterator[Engine]:
    """The panel's database as the stack's processes see it (SQLite opened read-only)."""
    url = stack.database_url
    if url.startswith("sqlite:///"):
        engine = create_engine(f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true",
                               connect_args={"timeout": 30})
    else:
        engine = create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def panel_rows(panel_engine: Engine) -> Callable[[str, tuple], list[tuple]]:
    """Query the panel's database with `?` placeholders; returns the rows as tuples."""
    def query(sql: str, params: tuple) -> list[tuple]:
        if panel_engine.dialect.paramstyle != "qmark":
            sql = sql.replace("?", "%s")
        with panel_engine.connect() as connection:
            return [tuple(row) for row in connection.exec_driver_sql(sql, params)]
    return query


@pytest.fixture
def panel_db(panel_rows: Callable[[str, tuple], list[tuple]]) -> Callable[[str, tuple], dict]:
    """Query the panel's database; returns {first column: second column}."""
    return lambda sql, params: dict(panel_rows(sql, params))


@contextlib.contextmanager
def running_stack(base: Path, databases: Any, **options: Any) -> Iterator[LocalStack]:
    """A whole system of a module's own shape (e.g. several workers: StackSettings' options), on the
    session's database backend; for a module that overrides the `stack` fixture."""
    root = Path(tempfile.mkdtemp(dir=base, prefix="stack-"))
    root.chmod(0o755)  # Exim's processes run as Debian-exim and must reach its run directory
    with databases.for_system() as database_url:
        with LocalStack(StackSettings(root=root, database_url=database_url, **options)) as running:
            yield running
