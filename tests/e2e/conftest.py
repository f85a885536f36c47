"""The whole system started once per module (real processes), and helpers to drive it."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

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
def stack(exim_tmp_base):
    root = Path(tempfile.mkdtemp(dir=exim_tmp_base, prefix="stack-"))
    root.chmod(0o755)  # Exim's processes run as Debian-exim and must reach its run directory
    with LocalStack(StackSettings(root=root)) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack) -> Api:
    return Api(stack.panel_url, stack.api_token)


@pytest.fixture
def panel_db(stack) -> Callable[[str, tuple], dict]:
    """Query the panel's SQLite DB read-only; returns {first column: second column}."""
    def query(sql: str, params: tuple) -> dict:
        connection = sqlite3.connect(f"file:{stack.instance_path / 'mailfleet.db'}?mode=ro", uri=True, timeout=30)
        try:
            return dict(connection.execute(sql, params).fetchall())
        finally:
            connection.close()
    return query
