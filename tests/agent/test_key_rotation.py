"""The agent's key rotated without downtime (docs/agent-protocol.md, `POST /v1/key`): the panel
hands a new key in a message sealed with the current one; the agent then opens messages sealed
with either, and once the panel uses the new key the old one retires after a grace time."""

from __future__ import annotations

import stat
from typing import Any

import pytest
from cryptography.fernet import Fernet

from worker_agent import protocol
from worker_agent.api import create_app
from worker_agent.config import AgentConfig
from worker_agent.keyring import KeyRing

from .conftest import init_node


def call(client: Any, key: bytes, path: str, data: Any) -> tuple[int, Any]:
    nonce, body = protocol.seal(key, path, data)
    response = client.post(path, data=body, headers={"Content-Type": protocol.CONTENT_TYPE})
    if response.status_code == 403:
        return 403, response.data.decode()
    opened = protocol.unseal(key, path, response.data)  # the reply is sealed with the key that was used
    assert opened.reply_to == nonce
    return response.status_code, opened.data


@pytest.fixture
def agent(write_config) -> tuple[Any, AgentConfig]:
    config = write_config(key_grace=0)
    init_node(config)
    return create_app(config).test_client(), config


def test_a_new_key_handed_with_the_old_one_opens_messages_and_retires_the_old_one(agent) -> None:
    client, config = agent
    old = config.key_file.read_bytes().strip()
    new = Fernet.generate_key()
    assert call(client, old, "/v1/key", {"key": new.decode()}) == (200, {"ok": True})
    assert config.key_file.read_bytes().split() == [new, old]  # kept across restarts, newest first
    assert stat.S_IMODE(config.key_file.stat().st_mode) == 0o600
    # Until the panel uses the new key, the old one still opens (the daemon's calls in flight).
    assert call(client, old, "/v1/ping", {})[0] == 200
    assert call(client, new, "/v1/ping", {})[0] == 200
    # The panel used the new key: with a grace of 0 s the old key no longer opens anything.
    status, reason = call(client, old, "/v1/ping", {})
    assert status == 403 and "not sealed with this worker's key" in reason
    assert config.key_file.read_bytes().split() == [new]
    # A restarted agent reads the same keys.
    assert call(create_app(config).test_client(), new, "/v1/ping", {})[0] == 200


@pytest.mark.parametrize("data,reason", [
    ({"key": "not a key"}, "key must be a Fernet key"),
    ({}, "key must be a Fernet key"),
    ([], "request body must be a JSON object"),
])
def test_a_bad_new_key_is_refused_and_changes_nothing(agent, data, reason) -> None:
    client, config = agent
    before = config.key_file.read_bytes()
    old = before.strip()
    status, reply = call(client, old, "/v1/key", data)
    assert status == 400 and reason in reply["error"]
    assert config.key_file.read_bytes() == before


def test_a_key_from_someone_without_the_current_key_is_refused(agent) -> None:
    client, config = agent
    before = config.key_file.read_bytes()
    stranger = Fernet.generate_key()
    status, reason = call(client, stranger, "/v1/key", {"key": stranger.decode()})
    assert status == 403 and config.key_file.read_bytes() == before


def test_the_old_key_keeps_opening_for_the_grace_time(tmp_path) -> None:
    path = tmp_path / "agent.key"
    old, new = Fernet.generate_key(), Fernet.generate_key()
    path.write_bytes(old + b"\n")
    ring = KeyRing(path, grace=300)
    ring.add(new)
    assert ring.keys(now=1000) == [new, old]
    ring.used(new, now=1000)
    assert ring.keys(now=1299) == [new, old] and ring.keys(now=1301) == [new]
    assert KeyRing(path, grace=300).keys(now=1299) == [new, old]  # the retirement time is kept in the file
