"""Fixtures for the worker agent's tests: configs, campaigns, recipients, a queue DB."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker_agent.config import AgentConfig, load_config
from worker_agent.queue import QueueDB
from worker_agent.setup_node import init_node

CAMPAIGN: dict[str, Any] = {
    "id": 12,
    "subject": "News for {{ name }}",
    "from_email": "news@example.com",
    "from_name": "Example News",
    "reply_to": None,
    "text": "Hello {{ name }}\nYour city: {{ city }}\n{{ unsubscribe_url }}\n",
    "html": "<p>Hello {{ name }}</p><p>{{ city }}</p><a href=\"{{ unsubscribe_url }}\">unsubscribe</a>\n",
    "encoding": "quoted-printable",
    "message_id_domain": "example.com",
    "bounce_domain": "bounces.example.com",
    "unsubscribe_url": "http://127.0.0.1:5000/u/",
}


def make_campaign(**changes: Any) -> dict[str, Any]:
    campaign = copy.deepcopy(CAMPAIGN)
    campaign.update(changes)
    return campaign


def make_recipient(i: int = 9001, **changes: Any) -> dict[str, Any]:
    recipient = {"id": i, "email": f"user{i}@example.org", "fields": {"name": f"Ann {i}", "city": "Oslo"},
                 "source_ip": "127.0.0.2", "token": f"{i}-3f2a9c1b7e"}
    recipient.update(changes)
    return recipient


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., AgentConfig]:
    """Write an agent config JSON under tmp_path (data in tmp_path/data) and load it."""

    def write(**settings: Any) -> AgentConfig:
        raw = {"data_dir": str(tmp_path / "data"), "exim_mainlog": str(tmp_path / "mainlog"),
               "listen": "127.0.0.1:0", "hostname": "worker.test"}
        raw.update(settings)
        path = tmp_path / "agent.json"
        path.write_text(json.dumps(raw))
        return load_config(path)

    return write


@pytest.fixture
def agent_config(write_config: Callable[..., AgentConfig]) -> AgentConfig:
    """A config whose key and certificate exist (``init`` has run)."""
    config = write_config()
    init_node(config)
    return config


@pytest.fixture
def queue_db(tmp_path: Path) -> QueueDB:
    db = QueueDB(tmp_path / "queue.sqlite3")
    yield db
    db.close()
